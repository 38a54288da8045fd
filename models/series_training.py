"""Training the small sequence regressors with the shared loop (``models.training.fit``).

What is specific to regression lives here: the MSE loss in normalized target units (see
``models.series.normalize``, so learning rates mean the same for any data scale), its
validation callback and the global normalization fitted on training data.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from harstream.models import series, training


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
        x_n, shift, scale = series.normalize(x, norm)
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
        series.init_params(model, seed),
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
