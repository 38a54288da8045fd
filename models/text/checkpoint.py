"""Save and load text-CNN checkpoints, and build their Predictor.

The Predictor's input is int32 token ids of shape ``(width,)`` per message: tokenizing
is Python string work that cannot be jitted, so it happens before the batch is formed
(:func:`texts_to_ids`), with the vocabulary and length stored in ``meta["text"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from harstream.models import checkpoint
from harstream.models.predictor import Predictor
from harstream.models.text import data, network


def save(
    path: str | Path, arch: str, config: dict[str, Any], params: Any, meta: dict[str, Any]
) -> Path:
    """Write a text checkpoint; ``meta`` must hold ``classes`` and the ``text`` block."""
    required = ("classes", "text", "name", "version")
    full = checkpoint.family_meta("text", arch, config, meta, required)
    full["input_shape"] = [full["text"]["max_len"] + full["text"].get("char_len", 0)]
    return checkpoint.save(path, params, full)


def load(path: str | Path) -> tuple[Any, dict[str, Any], Any]:
    """Return ``(module, params, meta)``, checking weights, vocabulary and classes."""
    model, meta = checkpoint.build_from_meta(path, "text", network.build)
    try:
        encoder = data.TextEncoder.from_meta(meta)
    except (ValueError, TypeError) as exc:
        raise checkpoint.CheckpointError(f"{path}: {exc}") from None
    sizes = [(len(encoder.words), model.vocab_size)]
    if encoder.chars is not None or hasattr(model, "char_vocab_size"):
        n_chars = len(encoder.chars) if encoder.chars is not None else 0
        sizes.append((n_chars, getattr(model, "char_vocab_size", 0)))
    for got, want in sizes:
        if got != want:
            raise checkpoint.CheckpointError(
                f"{path}: vocabulary of {got} tokens for a model of {want}"
            )
    checkpoint.check_classes(path, meta, model.num_classes)
    expected = jax.eval_shape(lambda: network.init_params(model, encoder.width))
    params, meta = checkpoint.load(path, expected)
    return model, params, meta


def texts_to_ids(texts: Sequence[str], meta: dict[str, Any]) -> np.ndarray:
    """Raw messages -> the ``(n, width)`` int32 ids a text Predictor takes."""
    return data.texts_to_ids(texts, meta)


def predictor_from_checkpoint(path: Path, max_batch: int = 256) -> Predictor:
    """A compiled text predictor: ``(n, width)`` token ids in, class probabilities out."""
    model, params, meta = load(path)
    width = data.TextEncoder.from_meta(meta).width
    return Predictor(
        network.make_forward(model),
        params,
        item_shape=(width,),
        item_kind="i",
        name=meta["name"],
        version=meta["version"],
        labels=meta["classes"],
        max_batch=max_batch,
        meta=meta,
    )
