"""The one table of model families: everything that needs to know the families reads it.

A family is one kind of model input on the bus: HAR accelerometer windows, text messages,
numeric series. The command line registers each family's ``train``/``evaluate`` commands
from here, the model registry finds the code that loads a checkpoint of the family and the
model shipped for it, the service builds the family's route (topic, decoder, per-id buffer,
encoder), and the serve configuration makes ``--families`` and the family's checkpoint
option (``--model``, ``--text-model``, ...) from it.

Adding a family:

1. ``models/<name>/`` with the files every family has: ``network.py``, ``data.py``,
   ``training.py``, ``evaluation.py``, ``checkpoint.py`` (with ``predictor_from_checkpoint``)
   and ``cli.py`` (with ``register(groups)``);
2. ``stream/families/<name>.py``: decode, per-id buffer, then ``build(config, predictor)``
   returning its :class:`~harstream.stream.routes.Route`;
3. one :class:`Family` entry in :data:`FAMILIES` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from harstream.models import WEIGHTS_DIR
from harstream.models.checkpoint import CheckpointError, load_meta
from harstream.models.har import cli as har_cli
from harstream.models.series import cli as series_cli
from harstream.models.text import cli as text_cli
from harstream.stream.families import har as har_stream
from harstream.stream.families import series as series_stream
from harstream.stream.families import text as text_stream

if TYPE_CHECKING:
    from harstream.models.predictor import Predictor
    from harstream.stream.routes import Route


@dataclass(frozen=True)
class Family:
    """One model family and where each part of it lives.

    ``load`` turns a checkpoint folder into a compiled Predictor (it imports JAX, so it is
    only called when a model is needed, never for ``--help``).
    """

    name: str
    summary: str
    model_option: str  # the serve option (flag, env, TOML key) naming its checkpoint
    shipped: str  # the folder of the shipped model under harstream/models/weights
    cli: ModuleType  # register(groups): its train/evaluate/experiment commands
    build_route: Callable[[Any, Predictor | None], Route]
    load: Callable[[Path, int], Predictor]

    @property
    def shipped_path(self) -> Path:
        return WEIGHTS_DIR / self.shipped


def _load_har(path: Path, max_batch: int) -> Predictor:
    from harstream.models.har.checkpoint import predictor_from_checkpoint

    return predictor_from_checkpoint(path, max_batch=max_batch)


def _load_text(path: Path, max_batch: int) -> Predictor:
    from harstream.models.text.checkpoint import predictor_from_checkpoint

    return predictor_from_checkpoint(path, max_batch=max_batch)


def _load_series(path: Path, max_batch: int) -> Predictor:
    from harstream.models.series.checkpoint import predictor_from_checkpoint

    return predictor_from_checkpoint(path, max_batch=max_batch)


FAMILIES: list[Family] = [
    Family(
        "har",
        "activity from 80-sample accelerometer windows",
        "model",
        "har-blend",
        har_cli,
        har_stream.build,
        _load_har,
    ),
    Family(
        "text",
        "a class for each text message",
        "text_model",
        "text-cnn",
        text_cli,
        text_stream.build,
        _load_text,
    ),
    Family(
        "series",
        "a one-step-ahead forecast for each numeric stream",
        "series_model",
        "series-lstm",
        series_cli,
        series_stream.build,
        _load_series,
    ),
]


def names() -> list[str]:
    """The families' names, in table order."""
    return [f.name for f in FAMILIES]


def lookup(name: str) -> Family:
    """The entry of ``name``; ValueError naming the known families otherwise."""
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown family {name!r}; expected one of {', '.join(names())}")


def default_checkpoint(name: str) -> Path:
    """The model shipped inside the package for family ``name``."""
    path = lookup(name).shipped_path
    if not path.is_dir():
        raise CheckpointError(
            f"the shipped {name} model is missing from {path}; reinstall harstream"
        )
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or, when no such file exists and it is a bare name, the model of
    that name shipped in the package (``har-cnn``, ``har-blend``, ...)."""
    path = Path(path)
    shipped = WEIGHTS_DIR / path.name
    if not path.exists() and len(path.parts) == 1 and shipped.is_dir():
        return shipped
    return path


def load_predictor(
    path: str | Path | None = None, *, family: str | None = None, max_batch: int = 256
) -> Predictor:
    """Load the checkpoint at ``path`` (or the shipped model of ``family``) as a ready,
    compiled Predictor, with the loader of the family its metadata names."""
    if path is None:
        if family is None:
            raise ValueError("give a checkpoint path or a family")
        path = default_checkpoint(family)
    path = resolve_checkpoint(path)
    meta = load_meta(path)
    if family is not None and meta["family"] != family:
        raise CheckpointError(f"{path} holds a {meta['family']!r} model, not a {family!r} model")
    try:
        entry = lookup(meta["family"])
    except ValueError:
        raise CheckpointError(f"{path}: unknown model family {meta['family']!r}") from None
    return entry.load(Path(path), max_batch)
