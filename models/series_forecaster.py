"""Train the streaming forecaster: one-step-ahead prediction from the last k values.

Synthetic training (the default) holds out whole series for validation and test; a user
file is split in time (first 70% train, next 15% validation, last 15% test), never at
random, so the test part lies in the future of everything the model saw. Every result is
reported beside the naive forecast "the next value equals the last one", which any
forecaster worth serving has to beat.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harstream.models import series, series_data

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
        every = series_data.synthetic_series(
            config.synthetic_series, config.synthetic_length, config.seed
        )
        n_val = n_test = max(1, len(every) // 10)
        chunks = {"val": every[:n_val], "test": every[n_val : n_val + n_test]}
        chunks["train"] = every[n_val + n_test :]
    else:
        values = series_data.read_series(config.data, config.column)
        a, b = int(len(values) * 0.7), int(len(values) * 0.85)
        chunks = {"train": [values[:a]], "val": [values[a - k : b]], "test": [values[b - k :]]}
    return {name: series_data.next_value_pairs(c, k) for name, c in chunks.items()}


def mse_report(pred: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MSE of ``pred``, of the naive last-value forecast, and their ratio (< 1: better)."""
    mse = float(np.mean((pred - y) ** 2))
    naive = float(np.mean((x[:, -1] - y) ** 2))
    return {"mse": mse, "naive_mse": naive, "ratio_to_naive": mse / naive if naive else np.inf}


def train_forecaster(
    config: SeriesTrainConfig, out: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Train, test against the naive forecast, save the checkpoint and curves."""
    import jax
    from harstream.models import series_checkpoint, training
    from harstream.models.series_training import global_normalization, train

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; expected one of {sorted(MODELS)}")
    if config.normalization not in ("window", "global"):
        raise ValueError("normalization must be 'window' or 'global'")
    if config.normalization == "window" and config.window < 2:
        raise ValueError("window normalization needs a window of at least 2 values")
    parts = _parts(config)
    arch = MODELS[config.model]
    arch_config = {"window": config.window}
    model = series.build(arch, arch_config)
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
    forward = jax.jit(series.make_forward(model, norm))
    x_te, y_te = parts["test"]
    test = mse_report(training.predict_batches(forward, params, x_te), x_te, y_te)
    test["windows"] = len(y_te)
    meta = {
        "name": arch,
        "version": config.version,
        "normalization": norm,
        "training": {
            "config": asdict(config),
            "data": config.data or "synthetic (models.series_data.synthetic_series)",
            "windows": {k: len(v[1]) for k, v in parts.items()},
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "seconds_per_epoch": round(result.mean_epoch_seconds, 2),
            "history": result.history,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "metrics": {"validation_loss_normalized": result.best_value, "test": test},
    }
    out = Path(out)
    series_checkpoint.save(out, arch, arch_config, params, meta)
    training.save_curves(
        result.history, out / "curves.png", title=arch, best_epoch=result.best_epoch
    )
    return meta
