"""Train the streaming forecaster: one-step-ahead prediction from the last k values.

Synthetic training (the default) holds out whole series for validation and test; a user
file is split in time (first 70% train, next 15% validation, last 15% test), never at
random, so the test part lies in the future of everything the model saw. Every result is
reported beside the naive forecast "the next value equals the last one", which any
forecaster worth serving has to beat (``models.series.evaluation``).

The small regressors (also those of the lag experiment) train with the shared loop
(``models.training.fit``); what is specific to regression lives here: the MSE loss in
normalized target units (see ``models.series.network.normalize``, so learning rates mean
the same for any data scale), its validation callback and the global normalization fitted
on training data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from harstream.models import training
from harstream.models.series import network
from harstream.models.series.data import next_value_pairs, read_series, synthetic_series
from harstream.models.series.evaluation import score_forecaster

log = logging.getLogger(__name__)

MODELS = {"lstm": "series-lstm", "mlp": "series-mlp"}


@dataclass
class SeriesTrainConfig:
    """Everything a forecaster training run depends on; stored in the checkpoint."""

    data: str | None = None
    column: str | None = None
    model: str = "lstm"
    window: int = 5
    normalization: str = "window"
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-2
    patience: int = 8
    seed: int = 0
    synthetic_series: int = 300
    synthetic_length: int = 400
    version: str = field(default_factory=lambda: dt.date.today().strftime("%Y.%m.%d"))


def _parts(config: SeriesTrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    k = config.window
    if config.data is None:
        every = synthetic_series(config.synthetic_series, config.synthetic_length, config.seed)
        n_val = n_test = max(1, len(every) // 10)
        chunks = {"val": every[:n_val], "test": every[n_val : n_val + n_test]}
        chunks["train"] = every[n_val + n_test :]
    else:
        values = read_series(config.data, config.column)
        a, b = int(len(values) * 0.7), int(len(values) * 0.85)
        chunks = {"train": [values[:a]], "val": [values[a - k : b]], "test": [values[b - k :]]}
    return {name: next_value_pairs(c, k) for name, c in chunks.items()}


def global_normalization(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Mean/std of inputs and targets, fitted on training data only."""
    return {
        "mode": "global",
        "x_mean": float(x.mean()),
        "x_std": float(x.std() or 1.0),
        "y_mean": float(y.mean()),
        "y_std": float(y.std() or 1.0),
    }


def mse_normalized(model: Any, norm: dict[str, Any]):
    """``(params, x, y) -> MSE`` between the model's output and the normalized target."""

    def mse(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        x_n, shift, scale = network.normalize(x, norm)
        return jnp.mean((model.apply({"params": params}, x_n) - (y - shift) / scale) ** 2)

    return mse


def train(
    model: Any,
    norm: dict[str, Any],
    train_set: tuple[np.ndarray, np.ndarray],
    val_set: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 300,
    batch_size: int = 32,
    lr: float = 1e-2,
    patience: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> training.FitResult:
    """Fit ``model`` on windows ``(n, k)`` -> targets ``(n,)``; best epoch by validation MSE."""
    mse = mse_normalized(model, norm)
    x_val, y_val = (jnp.asarray(a, jnp.float32) for a in val_set)
    val_mse = jax.jit(lambda p: mse(p, x_val, y_val))

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array], rng: jax.Array):
        return mse(params, *batch), {}

    return training.fit(
        loss_fn,
        network.init_params(model, seed),
        tuple(np.asarray(a, np.float32) for a in train_set),
        optax.adam(lr),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        validate=lambda p: {"val_loss": float(val_mse(p))},
        patience=patience,
        progress=progress,
        desc=type(model).__name__,
    )


def train_forecaster(
    config: SeriesTrainConfig, out: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Train, test against the naive forecast, save the checkpoint and curves."""
    from harstream.models.series import checkpoint

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; expected one of {sorted(MODELS)}")
    if config.normalization not in ("window", "global"):
        raise ValueError("normalization must be 'window' or 'global'")
    if config.normalization == "window" and config.window < 2:
        raise ValueError("window normalization needs a window of at least 2 values")
    parts = _parts(config)
    arch = MODELS[config.model]
    arch_config = {"window": config.window}
    model = network.build(arch, arch_config)
    x_tr, y_tr = parts["train"]
    norm = (
        global_normalization(x_tr, y_tr) if config.normalization == "global" else {"mode": "window"}
    )
    result = train(
        model, norm, parts["train"], parts["val"], epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, patience=config.patience,
        seed=config.seed, progress=progress,
    )  # fmt: skip
    params = jax.device_get(result.params)
    forward = jax.jit(network.make_forward(model, norm))
    test = score_forecaster(forward, params, *parts["test"])
    meta = {
        "name": arch,
        "version": config.version,
        "normalization": norm,
        "training": {
            "config": asdict(config),
            "data": config.data or "synthetic (models.series.data.synthetic_series)",
            "windows": {k: len(v[1]) for k, v in parts.items()},
            **result.record(),
        },
        "metrics": {"validation_loss_normalized": result.best_value, "test": test},
    }
    out = Path(out)
    checkpoint.save(out, arch, arch_config, params, meta)
    training.save_curves(
        result.history, out / "curves.png", title=arch, best_epoch=result.best_epoch
    )
    return meta
