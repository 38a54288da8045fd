"""The sequence family: the article's small LSTM and MLP regressors over windows of values.

``SeriesLSTM`` reads a window of k values step by step (LSTM(8) -> Dense(2) -> Dense(1),
k = 5 in the article); ``SeriesMLP`` sees the window as one flat vector (Dense(8) ->
Dense(2) -> Dense(1); the article gives it one lagged value, k = 1). Both predict one number.

Normalization is part of the forward pass, in one of two modes stored in the checkpoint:

- ``global``: inputs and targets are standardised with means and deviations fitted on the
  training data (the article's experiment; without it the LSTM's tanh saturates at the
  upper range of the values);
- ``window``: each window is shifted by its last value and scaled by its own spread, and
  the prediction is mapped back the same way. A forecaster trained so works on streams of
  any level and scale, which is what a service fed by unknown sensors needs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

WINDOW_EPS = 1e-3


class SeriesLSTM(nn.Module):
    """LSTM(hidden) over the window's steps, then Dense(2) -> Dense(1) (linear, as in Keras)."""

    window: int = 5
    hidden: int = 8
    bottleneck: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name="lstm")(x[..., None])[:, -1, :]
        h = nn.Dense(self.bottleneck, name="dense1")(h)
        return nn.Dense(1, name="out")(h)[:, 0]


class SeriesMLP(nn.Module):
    """Dense(hidden, relu) -> Dense(2) -> Dense(1) on the window as a flat vector."""

    window: int = 1
    hidden: int = 8
    bottleneck: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, name="dense1")(x))
        h = nn.Dense(self.bottleneck, name="dense2")(h)
        return nn.Dense(1, name="out")(h)[:, 0]


ARCHITECTURES: dict[str, type[nn.Module]] = {"series-lstm": SeriesLSTM, "series-mlp": SeriesMLP}


def build(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a sequence architecture by name with its saved settings."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown sequence architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**config)


def init_params(model: nn.Module, seed: int = 0) -> Any:
    """Initialise parameters for one window of ``model.window`` values."""
    x = jnp.zeros((1, model.window), jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), x)["params"]  # one compile, not per op


def normalize(x: jax.Array, norm: dict[str, Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x_normalized, shift, scale)``; predictions map back as ``model(x_n) * scale + shift``."""
    if norm["mode"] == "global":
        x_n = (x - norm["x_mean"]) / norm["x_std"]
        return x_n, jnp.asarray(norm["y_mean"], x.dtype), jnp.asarray(norm["y_std"], x.dtype)
    if norm["mode"] == "window":
        shift = x[:, -1]
        scale = jnp.std(x, axis=1) + WINDOW_EPS if x.shape[1] > 1 else jnp.ones_like(shift)
        return (x - shift[:, None]) / scale[:, None], shift, scale
    raise ValueError(f"unknown normalization mode {norm['mode']!r}; expected 'global' or 'window'")


def make_forward(model: nn.Module, norm: dict[str, Any]):
    """Pure inference ``(params, windows (n, k)) -> forecasts (n,)`` in the data's units."""
    norm = {k: (float(v) if isinstance(v, int | float) else v) for k, v in norm.items()}

    def forward(params: Any, x: jax.Array) -> jax.Array:
        x_n, shift, scale = normalize(x, norm)
        return model.apply({"params": params}, x_n) * scale + shift

    return forward
