"""Save and load sequence-model checkpoints, and build their Predictor.

``meta["normalization"]`` (``global`` with fitted means/deviations, or ``window``) is
compiled into the forward pass, so the Predictor takes raw values and returns forecasts
in the data's own units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from harstream.models import checkpoint
from harstream.models.predictor import Predictor
from harstream.models.series import network

GLOBAL_KEYS = ("x_mean", "x_std", "y_mean", "y_std")


def save(
    path: str | Path, arch: str, config: dict[str, Any], params: Any, meta: dict[str, Any]
) -> Path:
    """Write a sequence checkpoint; ``meta`` must hold ``normalization``, ``name``, ``version``."""
    required = ("normalization", "name", "version")
    full = checkpoint.family_meta("series", arch, config, meta, required)
    full["window"] = int(config["window"])
    full["input_shape"] = [full["window"]]
    full["horizon"] = 1
    return checkpoint.save(path, params, full)


def load(path: str | Path) -> tuple[Any, dict[str, Any], Any]:
    """Return ``(module, params, meta)``, checking the weights and the normalization."""
    model, meta = checkpoint.build_from_meta(path, "series", network.build)
    norm = meta.get("normalization")
    mode = norm.get("mode") if isinstance(norm, dict) else None
    if mode not in ("global", "window") or (
        mode == "global" and not all(isinstance(norm.get(k), int | float) for k in GLOBAL_KEYS)
    ):
        raise checkpoint.CheckpointError(
            f"{path}: normalization must be {{'mode': 'window'}} or 'global' with {GLOBAL_KEYS}"
        )
    expected = jax.eval_shape(lambda: network.init_params(model))
    params, meta = checkpoint.load(path, expected)
    return model, params, meta


def predictor_from_checkpoint(path: Path, max_batch: int = 256) -> Predictor:
    """A compiled forecaster: ``(n, k)`` windows of raw values in, ``(n,)`` next values out."""
    model, params, meta = load(path)
    return Predictor(
        network.make_forward(model, meta["normalization"]),
        params,
        item_shape=(model.window,),
        name=meta["name"],
        version=meta["version"],
        max_batch=max_batch,
        meta=meta,
    )
