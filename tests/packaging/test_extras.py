"""Commands that need the ``train`` extra say so in one line, before doing any work, when
scikit-learn or matplotlib is not installed; ``--help`` works without them.

``sys.modules[name] = None`` is how Python sees a package that is not installed: importing
it raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None.
"""

from __future__ import annotations

import sys

import pytest

from harstream.cli import main


@pytest.mark.parametrize(
    ("missing", "argv", "line"),
    [
        (
            "sklearn",
            ["train", "har", "--data", "no-such-recordings"],
            "harstream train needs scikit-learn: pip install 'harstream[train]'",
        ),
        (
            "matplotlib",
            ["evaluate", "text", "--data", "no-such-messages.tsv"],
            "harstream evaluate needs matplotlib: pip install 'harstream[train]'",
        ),
        (
            "matplotlib",
            ["experiment", "lag", "--epochs", "1"],
            "harstream experiment needs matplotlib: pip install 'harstream[train]'",
        ),
        (
            "matplotlib",
            ["bench", "e2e", "--devices", "1", "--plot", "never-drawn.png"],
            "harstream bench e2e --plot needs matplotlib: pip install 'harstream[train]'",
        ),
    ],
)
def test_a_missing_extra_is_named_in_one_line(monkeypatch, capsys, tmp_path, missing, argv, line):
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_help_needs_no_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "har", "--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out
