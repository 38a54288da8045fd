"""Training for the small sequence regressors: MSE, Adam, early stopping on validation.

These models have tens to hundreds of parameters and the data sets a few thousand windows,
so a whole epoch of mini-batches runs as one ``jax.lax.scan`` inside one jitted call;
Python only decides when to stop. Loss is computed in normalized target units (see
``models.series.normalize``), so learning rates mean the same for any data scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import series


@dataclass
class FitResult:
    """Best parameters (by validation loss) and the per-epoch history in normalized units."""

    params: Any
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


def global_normalization(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Mean/std of inputs and targets, fitted on training data only."""
    return {
        "mode": "global",
        "x_mean": float(x.mean()),
        "x_std": float(x.std() or 1.0),
        "y_mean": float(y.mean()),
        "y_std": float(y.std() or 1.0),
    }


def fit(
    model: Any,
    norm: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 300,
    batch_size: int = 32,
    lr: float = 1e-2,
    patience: int = 40,
    seed: int = 0,
) -> FitResult:
    """Train ``model`` on windows ``(n, k)`` -> targets ``(n,)``; keep the best validation epoch."""
    x_tr, y_tr = (np.asarray(a, np.float32) for a in train)
    x_va, y_va = (np.asarray(a, np.float32) for a in val)
    n_batches = max(1, len(x_tr) // batch_size)
    params = series.init_params(model, seed)
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    def loss_fn(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        x_n, shift, scale = series.normalize(x, norm)
        return jnp.mean((model.apply({"params": p}, x_n) - (y - shift) / scale) ** 2)

    def step(carry: tuple[Any, Any], batch: tuple[jax.Array, jax.Array]):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    @jax.jit
    def epoch(p: Any, s: Any, key: jax.Array):
        order = jax.random.permutation(key, len(x_tr))[: n_batches * batch_size]
        xb = jnp.asarray(x_tr)[order].reshape(n_batches, batch_size, -1)
        yb = jnp.asarray(y_tr)[order].reshape(n_batches, batch_size)
        (p, s), losses = jax.lax.scan(step, (p, s), (xb, yb))
        return p, s, losses.mean(), loss_fn(p, jnp.asarray(x_va), jnp.asarray(y_va))

    key = jax.random.PRNGKey(seed)
    result = FitResult(params=params, best_epoch=0)
    best = np.inf
    for i in range(epochs):
        key, sub = jax.random.split(key)
        params, opt_state, tr_loss, va_loss = epoch(params, opt_state, sub)
        result.train_loss.append(float(tr_loss))
        result.val_loss.append(float(va_loss))
        if float(va_loss) < best:
            best, result.params, result.best_epoch = float(va_loss), params, i + 1
        elif i + 1 - result.best_epoch >= patience:
            break
    return result
