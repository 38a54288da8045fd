"""Per-user calibration of a HAR CNN from a few labelled windows, in plain numpy.

Two methods on the CNN's penultimate embedding (the input of its final Dense layer):

- **prototypes**: the user's mean embedding per labelled class; a window is scored by
  cosine similarity to each mean (after subtracting the centroid of the user's class
  means, because post-ReLU averages all point the same way and raw cosines are all close
  to 1), turned into probabilities by a softmax with temperature ``tau``. The result is
  mixed with the CNN's probabilities: ``(1 - weight) * cnn + weight * proto``. Classes the
  user did not label keep the CNN's probability; prototypes only redistribute the mass
  the CNN gives to labelled classes.
- **head**: a few full-batch gradient steps of the final Dense layer on the user's
  windows (softmax cross-entropy plus an L2 pull towards the shipped weights, so that a
  handful of windows cannot drag the head far).

State per user is ``C x D`` numbers (6 x 160 for the shipped CNN) either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Prototypes:
    """A user's class means (zero rows for absent classes), which classes are present, centre."""

    means: np.ndarray
    present: np.ndarray
    centre: np.ndarray


def fit_prototypes(emb: np.ndarray, labels: np.ndarray, n_classes: int) -> Prototypes:
    """Class means of a user's labelled embeddings ``(n, D)`` with class indices ``(n,)``."""
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    present = counts > 0
    if not present.any():
        raise ValueError("no labelled windows")
    sums = np.zeros((n_classes, emb.shape[1]))
    np.add.at(sums, labels, emb)
    means = sums / np.maximum(counts, 1)[:, None]
    return Prototypes(means, present, means[present].mean(axis=0))


class PrototypeSums:
    """A user's running sum and count of embeddings per class: the state of
    :func:`fit_prototypes` kept up to date one window at a time (``C x D`` sums and ``C``
    counts, whatever the number of windows)."""

    __slots__ = ("sums", "counts")

    def __init__(self, n_classes: int, dim: int) -> None:
        self.sums = np.zeros((n_classes, dim))
        self.counts = np.zeros(n_classes, np.int64)

    def add(self, emb: np.ndarray, label: int) -> None:
        self.sums[label] += emb
        self.counts[label] += 1

    def clear(self) -> None:
        self.sums[:] = 0.0
        self.counts[:] = 0

    def prototypes(self, min_windows: int = 1) -> Prototypes | None:
        """The :class:`Prototypes` of the classes with at least ``min_windows`` windows,
        None when no class has that many; equal to :func:`fit_prototypes` of the same windows
        restricted to those classes."""
        present = self.counts >= min_windows
        if not present.any():
            return None
        means = np.where(present[:, None], self.sums / np.maximum(self.counts, 1)[:, None], 0.0)
        return Prototypes(means, present, means[present].mean(axis=0))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def prototype_probs(emb: np.ndarray, protos: Prototypes, tau: float) -> np.ndarray:
    """``(n, C)`` softmax of centred cosine similarity / ``tau``; absent classes get 0."""
    sim = _unit(np.asarray(emb, np.float64) - protos.centre) @ _unit(protos.means - protos.centre).T
    sim = np.where(protos.present, sim, -np.inf)
    return softmax(sim / tau)


def mix(
    cnn_probs: np.ndarray, proto_probs: np.ndarray, present: np.ndarray, weight: float
) -> np.ndarray:
    """Mix prototype and CNN probabilities; unlabelled classes keep the CNN's mass."""
    cnn_probs = np.asarray(cnn_probs, np.float64)
    covered = cnn_probs[:, present].sum(axis=1, keepdims=True)
    proto_full = np.where(present, proto_probs * covered, cnn_probs)
    return (1.0 - weight) * cnn_probs + weight * proto_full


@dataclass(frozen=True)
class PrototypeCalibration:
    """Settings of the prototype method: softmax temperature and mixing weight."""

    # Chosen on 8 subjects the shipped CNN never saw, with a CNN trained on 25 others, from
    # tau in {0.02 .. 0.5} x weight in {0.25 .. 1} (20 s of labels, windows >= 40 s in).
    tau: float = 0.2
    weight: float = 0.9

    def apply(self, protos: Prototypes, emb: np.ndarray, cnn_probs: np.ndarray) -> np.ndarray:
        """Calibrated ``(n, C)`` probabilities of windows with embeddings ``emb``."""
        return mix(cnn_probs, prototype_probs(emb, protos, self.tau), protos.present, self.weight)


def finetune_head(
    emb: np.ndarray,
    labels: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    *,
    steps: int = 50,
    lr: float = 0.05,
    l2: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Final Dense layer ``(D, C)``, ``(C,)`` after ``steps`` full-batch gradient steps.

    Loss: mean softmax cross-entropy on the user's windows + ``l2 / 2 * |W - W0|^2``.
    """
    emb = np.asarray(emb, np.float64)
    onehot = np.eye(kernel.shape[1])[np.asarray(labels)]
    w0 = np.asarray(kernel, np.float64)
    w, b = w0.copy(), np.asarray(bias, np.float64).copy()
    for _ in range(steps):
        err = (softmax(emb @ w + b) - onehot) / len(emb)  # d loss / d logits
        w -= lr * (emb.T @ err + l2 * (w - w0))
        b -= lr * err.sum(axis=0)
    return w, b
