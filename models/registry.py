"""Load any checkpoint as a ready ``Predictor``: one place that knows every family.

Each family module provides ``predictor_from_checkpoint(path, max_batch) -> Predictor``;
this module maps ``meta["family"]`` to it and knows where the shipped defaults live.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from harstream.models.checkpoint import CheckpointError, load_meta
from harstream.models.predictor import Predictor

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_CHECKPOINTS = {
    "har": WEIGHTS_DIR / "har-cnn",
    "text": WEIGHTS_DIR / "text-cnn",
    "series": WEIGHTS_DIR / "series-lstm",
}
FAMILY_MODULES = {
    "har": "harstream.models.har.checkpoint",
    "text": "harstream.models.text.checkpoint",
    "series": "harstream.models.series.checkpoint",
}


def default_checkpoint(family: str) -> Path:
    """Path of the model shipped inside the package for ``family``."""
    try:
        path = DEFAULT_CHECKPOINTS[family]
    except KeyError:
        raise ValueError(
            f"unknown family {family!r}; expected one of {sorted(DEFAULT_CHECKPOINTS)}"
        ) from None
    if not path.is_dir():
        raise CheckpointError(
            f"the shipped {family} model is missing from {path}; reinstall harstream"
        )
    return path


def load_predictor(
    path: str | Path | None = None, *, family: str | None = None, max_batch: int = 256
) -> Predictor:
    """Load the checkpoint at ``path`` (or the shipped default of ``family``) as a Predictor."""
    if path is None:
        if family is None:
            raise ValueError("give a checkpoint path or a family")
        path = default_checkpoint(family)
    meta = load_meta(path)
    if family is not None and meta["family"] != family:
        raise CheckpointError(f"{path} holds a {meta['family']!r} model, not a {family!r} model")
    try:
        module = importlib.import_module(FAMILY_MODULES[meta["family"]])
    except KeyError:
        raise CheckpointError(f"{path}: unknown model family {meta['family']!r}") from None
    return module.predictor_from_checkpoint(Path(path), max_batch=max_batch)
