"""The text family: Yoon Kim's sentence CNN, the article's simpler convolution stack, and
a hybrid of Kim's CNN over words and over characters.

All take ``(n, width)`` int32 token ids (0 = padding, see ``models.text.data``) and
return class logits; ``make_forward`` adds the softmax so the served program is one call.
Padding positions embed to zero vectors, so a message's prediction does not depend on how
much padding the checkpoint's ``max_len`` adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from harstream.models.text.data import PAD_ID


def _embed(ids: jax.Array, vocab_size: int, dim: int) -> jax.Array:
    """Embedded ids with padding zeroed: ``(n, L) -> (n, L, dim)``."""
    x = nn.Embed(vocab_size, dim, name="embed")(ids)
    return x * (ids != PAD_ID)[..., None].astype(x.dtype)


def _kim_features(
    x: jax.Array, widths: Sequence[int], maps: int, prefix: str = "conv"
) -> jax.Array:
    """Parallel VALID convolutions of each width, ReLU, max over time, concatenated."""
    pooled = [
        jnp.max(nn.relu(nn.Conv(maps, (w,), padding="VALID", name=f"{prefix}{w}")(x)), axis=1)
        for w in widths
    ]
    return jnp.concatenate(pooled, axis=-1)


class KimCNN(nn.Module):
    """Kim (2014): parallel convolutions (widths 3/4/5, 100 maps each), max-over-time, dropout.

    With a vocabulary of V tokens and C classes it has 100 V + 120,300 + 300 C + C parameters
    (embeddings, the three convolutions, the dense layer).
    """

    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 100
    widths: Sequence[int] = (3, 4, 5)
    maps: int = 100
    dropout: float = 0.5

    @nn.compact
    def __call__(self, ids: jax.Array, *, train: bool = False) -> jax.Array:
        x = _kim_features(_embed(ids, self.vocab_size, self.embed_dim), self.widths, self.maps)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="dense")(x)


class HybridCNN(nn.Module):
    """Kim's word CNN beside the same CNN over characters (case kept), features concatenated.

    Input rows hold ``word_len`` word ids then the character ids (see
    ``models.text.data.TextEncoder``). Characters see what word tokens lose: spellings
    such as "FR33" or "txt", capitals, punctuation runs; the linear baseline's strength
    on this data is exactly its character n-grams.
    """

    vocab_size: int
    char_vocab_size: int
    word_len: int
    num_classes: int = 2
    embed_dim: int = 100
    char_dim: int = 32
    widths: Sequence[int] = (3, 4, 5)
    maps: int = 100
    char_widths: Sequence[int] = (3, 4, 5)
    char_maps: int = 100
    dropout: float = 0.5

    @nn.compact
    def __call__(self, ids: jax.Array, *, train: bool = False) -> jax.Array:
        words, chars = ids[:, : self.word_len], ids[:, self.word_len :]
        w = _kim_features(_embed(words, self.vocab_size, self.embed_dim), self.widths, self.maps)
        c = nn.Embed(self.char_vocab_size, self.char_dim, name="char_embed")(chars)
        c = c * (chars != PAD_ID)[..., None].astype(c.dtype)
        c = _kim_features(c, self.char_widths, self.char_maps, prefix="char_conv")
        x = jnp.concatenate([w, c], axis=-1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="dense")(x)


class StackCNN(nn.Module):
    """The article's stack: 3 x (Conv1D(128, 5) + MaxPool(5)), dense 128, softmax.

    Convolutions and pools use SAME padding and the last pool is over the whole remaining
    sequence (the article's MaxPool(35) for 1,000-token texts), so short SMS fit.
    """

    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 100
    filters: int = 128
    width: int = 5
    pool: int = 5
    blocks: int = 3
    hidden: int = 128
    dropout: float = 0.5

    @nn.compact
    def __call__(self, ids: jax.Array, *, train: bool = False) -> jax.Array:
        x = _embed(ids, self.vocab_size, self.embed_dim)
        for i in range(self.blocks):
            x = nn.relu(
                nn.Conv(self.filters, (self.width,), padding="SAME", name=f"conv{i + 1}")(x)
            )
            if i < self.blocks - 1:
                x = nn.max_pool(x, (self.pool,), strides=(self.pool,), padding="SAME")
        x = jnp.max(x, axis=1)
        x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="dense")(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "text-cnn": KimCNN,
    "text-stack": StackCNN,
    "text-hybrid": HybridCNN,
}
CLI_NAMES = {"kim": "text-cnn", "stack": "text-stack", "hybrid": "text-hybrid"}


def build(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a text architecture by name with its saved settings."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown text architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None
    return cls(**config)


def init_params(model: nn.Module, width: int, seed: int = 0) -> Any:
    """Initialise parameters for one message of ``width`` ids."""
    ids = jnp.zeros((1, width), jnp.int32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), ids)["params"]  # one compile, not per op


def min_length(model: nn.Module) -> int:
    """Shortest word or character length the architecture accepts (widest VALID convolution)."""
    return max(*getattr(model, "widths", (1,)), *getattr(model, "char_widths", (1,)))


def make_forward(model: nn.Module):
    """Pure inference function ``(params, ids) -> class probabilities``."""

    def forward(params: Any, ids: jax.Array) -> jax.Array:
        return jax.nn.softmax(model.apply({"params": params}, ids), axis=-1)

    return forward
