"""Pretrained word vectors in the GloVe text format (``word v1 ... vN`` per line).

Only the vectors of words in the model's vocabulary are kept, so reading the 400k-word
glove.6B files costs one pass and little memory. Vocabulary words the file lacks get small
random vectors (as the article does), padding gets zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harstream.models.text.data import PAD_ID


def read_vectors(
    path: str | Path, words: set[str] | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """``({word: vector}, dim)`` from a GloVe text file, restricted to ``words`` when given.

    Lines must all have the same number of values; a line that does not is an error naming
    the line, because a mixed file is a wrong file, not a dirty one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no word-vector file at {path}")
    vectors: dict[str, np.ndarray] = {}
    dim = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) < 2:
                if line.strip():
                    raise ValueError(f"{path}:{number}: expected 'word v1 ... vN'")
                continue
            if dim == 0:
                dim = len(parts) - 1
            elif len(parts) - 1 != dim:
                raise ValueError(
                    f"{path}:{number}: {len(parts) - 1} values where earlier lines have {dim}"
                )
            word = parts[0]
            if words is not None and word not in words:
                continue
            try:
                vectors[word] = np.asarray(parts[1:], np.float32)
            except ValueError:
                raise ValueError(f"{path}:{number}: non-numeric vector for {word!r}") from None
    if dim == 0:
        raise ValueError(f"{path} holds no vectors")
    return vectors, dim


def embedding_matrix(
    path: str | Path, vocab: Sequence[str], dim: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """``(matrix (len(vocab), dim), words found)`` for initialising an embedding layer.

    Words missing from the file get vectors drawn from a normal with the file's own spread,
    so they start on the same scale as the pretrained ones.
    """
    vectors, file_dim = read_vectors(path, set(vocab))
    if file_dim != dim:
        raise ValueError(
            f"{path} has {file_dim}-dimensional vectors; the model's embeddings have {dim} "
            f"(choose --embed-dim {file_dim})"
        )
    found = np.stack(list(vectors.values())) if vectors else np.zeros((0, dim), np.float32)
    scale = float(found.std()) if found.size else 0.1
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, scale or 0.1, (len(vocab), dim)).astype(np.float32)
    for i, word in enumerate(vocab):
        if word in vectors:
            matrix[i] = vectors[word]
    matrix[PAD_ID] = 0.0
    return matrix, len(vectors)
