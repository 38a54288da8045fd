"""The HAR family: the article's 1D CNN and an LSTM classifier over 80x3 accelerometer windows.

Both modules are plain Flax Linen modules so that inference is a pure function of
``(params, x)`` that ``jax.jit`` compiles once per batch size (see ``models.predictor``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harstream.models.har.windows import AXES, WINDOW


class HarCNN(nn.Module):
    """The article's network: 2x Conv1D(100,10), MaxPool(3), 2x Conv1D(160,10), GAP, dropout, dense.

    With 6 classes this has exactly 520,486 parameters, like the article's Keras model.
    """

    num_classes: int = 6
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Conv(100, (10,), padding="VALID", name="conv1")(x))
        x = nn.relu(nn.Conv(100, (10,), padding="VALID", name="conv2")(x))
        x = nn.max_pool(x, (3,), strides=(3,))
        x = nn.relu(nn.Conv(160, (10,), padding="VALID", name="conv3")(x))
        x = nn.relu(nn.Conv(160, (10,), padding="VALID", name="conv4")(x))
        x = jnp.mean(x, axis=1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="dense")(x)  # logits; softmax in the forward


class HarLSTM(nn.Module):
    """Stacked LSTM classifier over the same windows (the article's CNN-vs-LSTM question)."""

    num_classes: int = 6
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(self.layers):
            x = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name=f"lstm{i + 1}")(x)
        x = x[:, -1, :]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="dense")(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"har-cnn": HarCNN, "har-lstm": HarLSTM}


def build(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a HAR architecture by name with its saved settings."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown HAR architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**config)


def init_params(model: nn.Module, seed: int = 0) -> Any:
    """Initialise parameters for one 80x3 window."""
    x = jnp.zeros((1, WINDOW, AXES), jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), x)["params"]  # one compile, not per op


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def _standardizer(mean: np.ndarray, std: np.ndarray):
    mean_ = jnp.asarray(mean, jnp.float32)
    std_ = jnp.asarray(std, jnp.float32)
    return lambda x: (x - mean_) / std_


def make_forward(model: nn.Module, mean: np.ndarray, std: np.ndarray):
    """Pure inference function ``(params, x) -> class probabilities``.

    Standardisation constants are closed over (they are fixed per checkpoint), so the
    compiled program does normalisation, the network and softmax in one call.
    """
    standardize = _standardizer(mean, std)

    def forward(params: Any, x: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, standardize(x))
        return jax.nn.softmax(logits, axis=-1)

    return forward


def _is_dropout(module: nn.Module, _method: str) -> bool:
    return isinstance(module, nn.Dropout)


def make_embed_forward(model: nn.Module, mean: np.ndarray, std: np.ndarray):
    """Pure function ``(params, x) -> (class probabilities, embedding)``, like :func:`make_forward`.

    The embedding is the input of the final Dense layer (the CNN's 160 pooled features,
    the LSTM's last hidden state): the output of the Dropout just before it, the identity
    at inference, recorded with Flax's ``capture_intermediates`` so that the network is not
    written twice.
    """
    standardize = _standardizer(mean, std)

    def forward(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, state = model.apply(
            {"params": params}, standardize(x), capture_intermediates=_is_dropout
        )
        (emb,) = jax.tree_util.tree_leaves(state["intermediates"])
        return jax.nn.softmax(logits, axis=-1), emb

    return forward
