"""Optional dependencies: which pip extra installs each, and the one-line hint when missing.

``pip install harstream`` serves, replays and runs the demo. Training, evaluation, the
experiments and ``bench --plot`` need the ``train`` extra: scikit-learn (baselines, text
metrics) and matplotlib (curves and confusion matrices as PNG).
"""

from __future__ import annotations

import importlib.util

# import name -> (distribution on PyPI, extra that installs it)
EXTRAS = {
    "sklearn": ("scikit-learn", "train"),
    "matplotlib": ("matplotlib", "train"),
}


class MissingExtra(RuntimeError):
    """A command needs an optional dependency that is not installed; ``str()`` says which
    extra to install, in one line."""


def require(command: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` naming ``command`` unless every module (import names,
    keys of :data:`EXTRAS`) can be imported. Checked before the command does any work, so
    that it never fails after minutes of training for want of a plotting library."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            package, extra = EXTRAS[module]
            raise MissingExtra(f"{command} needs {package}: pip install 'harstream[{extra}]'")
