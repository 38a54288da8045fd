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
from harstream.models.predictor import StepForwards

KERNEL = 10  # every convolution's width; VALID padding, stride 1
FRONT_CHANNELS = 100  # the first two convolutions' output channels


class HarCNN(nn.Module):
    """The article's network: 2x Conv1D(100,10), MaxPool(3), 2x Conv1D(160,10), GAP, dropout, dense.

    With 6 classes this has exactly 520,486 parameters, like the article's Keras model.
    The network is two halves, :meth:`front` (the first two convolutions, whose outputs
    depend on the samples under their kernels only: VALID padding, stride 1) and
    :meth:`head` (the rest), so that :func:`make_step_forwards` can compute the front of
    a window from the previous window's front and the new samples alone.
    """

    num_classes: int = 6
    dropout: float = 0.5

    def setup(self) -> None:
        self.conv1 = nn.Conv(FRONT_CHANNELS, (KERNEL,), padding="VALID")
        self.conv2 = nn.Conv(FRONT_CHANNELS, (KERNEL,), padding="VALID")
        self.conv3 = nn.Conv(160, (KERNEL,), padding="VALID")
        self.conv4 = nn.Conv(160, (KERNEL,), padding="VALID")
        self.drop = nn.Dropout(self.dropout)
        self.dense = nn.Dense(self.num_classes)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.head(self.front(x), train=train)

    def front(self, x: jax.Array) -> jax.Array:
        """The second convolution's output, ``(n, len - 18, 100)`` for ``(n, len, 3)``:
        position ``p`` depends on input samples ``p`` to ``p + 18`` only."""
        return nn.relu(self.conv2(nn.relu(self.conv1(x))))

    def head(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits from the :meth:`front` of a whole window (softmax is in the forward)."""
        h = nn.max_pool(h, (3,), strides=(3,))
        h = nn.relu(self.conv4(nn.relu(self.conv3(h))))
        h = jnp.mean(h, axis=1)
        return self.dense(self.drop(h, deterministic=not train))


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


def make_step_forwards(
    model: nn.Module, mean: np.ndarray, std: np.ndarray, hop: int, window: int = WINDOW
) -> StepForwards | None:
    """The forward of :func:`make_embed_forward` computed incrementally over a device's
    consecutive windows ``hop`` samples apart; None where that reuses nothing.

    Only the HAR CNN qualifies: of its :meth:`HarCNN.front` (62 positions for 80 samples,
    6.2 of the 8.7 million multiply-adds per window) the first ``62 - hop`` positions of a
    window are the previous window's positions ``hop`` and on, since a position depends on
    the 19 samples under it and nothing else (standardisation is per sample and channel).
    The state kept per device is those ``62 - hop`` positions x 100 channels (float32:
    16,800 bytes at hop 20). A step computes the front over the last ``hop + 18`` samples
    (``hop`` new positions), prepends the state and runs :meth:`HarCNN.head` on the whole:
    at hop 20 about 4.4 instead of 8.7 million multiply-adds. The LSTM's state after a
    window depends on the whole window, so it has no such split.
    """
    front_len = window - 2 * (KERNEL - 1)
    if not isinstance(model, HarCNN) or not 1 <= hop < front_len:
        return None
    standardize = _standardizer(mean, std)
    reach = front_len - hop  # the first input sample a new front position depends on

    def outputs(params: Any, front: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits, state = model.apply(
            {"params": params}, front, method=HarCNN.head, capture_intermediates=_is_dropout
        )
        (emb,) = jax.tree_util.tree_leaves(state["intermediates"])
        return jax.nn.softmax(logits, axis=-1), emb, front[:, hop:]

    def front_of(params: Any, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, standardize(x), method=HarCNN.front)

    def full(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return outputs(params, front_of(params, x))

    def step(params: Any, x: jax.Array, kept: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return outputs(params, jnp.concatenate([kept, front_of(params, x[:, reach:])], axis=1))

    return StepForwards(full, step, (reach, FRONT_CHANNELS))
