"""Tests of harstream.models.har.calibration (real numbers, synthetic streams and embeddings)."""

import numpy as np

from harstream.models.har.calibration import (
    PrototypeCalibration,
    PrototypeSums,
    finetune_head,
    fit_prototypes,
    mix,
    prototype_probs,
    softmax,
)

C, D = 4, 16


def clusters(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-ReLU-like embeddings: a shared positive offset plus a class direction and noise."""
    centres = 5.0 + rng.normal(size=(C, D))
    labels = np.repeat(np.arange(C), n)
    emb = np.maximum(centres[labels] + 0.3 * rng.normal(size=(len(labels), D)), 0)
    return emb, labels, centres


def test_means_and_presence() -> None:
    emb = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    protos = fit_prototypes(emb, np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(protos.means, [[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    assert protos.present.tolist() == [True, False, True]
    np.testing.assert_allclose(protos.centre, [1.0, 1.0])


def test_prototypes_classify_clusters_that_raw_cosine_cannot_tell_apart() -> None:
    rng = np.random.default_rng(0)
    emb, labels, _ = clusters(rng, 20)
    protos = fit_prototypes(emb[::2], labels[::2], C)
    probs = prototype_probs(emb[1::2], protos, tau=0.1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == labels[1::2]).mean() == 1.0
    raw = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert (raw @ raw.T).min() > 0.9  # why the class means are centred first


def test_absent_classes_keep_the_cnn_probability() -> None:
    rng = np.random.default_rng(1)
    emb, labels, _ = clusters(rng, 10)
    keep = labels != 3
    protos = fit_prototypes(emb[keep], labels[keep], C)
    cnn = softmax(rng.normal(size=(len(emb), C)))
    p = PrototypeCalibration(tau=0.1, weight=1.0).apply(protos, emb, cnn)
    np.testing.assert_allclose(p[:, 3], cnn[:, 3])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(
        mix(cnn, prototype_probs(emb, protos, 0.1), protos.present, 0.0), cnn
    )


def test_head_finetuning_fixes_a_wrong_head_and_l2_holds_it_back() -> None:
    rng = np.random.default_rng(2)
    emb, labels, centres = clusters(rng, 15)
    emb = emb - emb.mean(axis=0)
    kernel = rng.normal(size=(D, C)) * 0.01
    bias = np.zeros(C)
    before = (softmax(emb @ kernel + bias).argmax(axis=1) == labels).mean()
    w, b = finetune_head(emb, labels, kernel, bias, steps=100, lr=0.05, l2=1e-3)
    assert before < 0.6
    assert (softmax(emb @ w + b).argmax(axis=1) == labels).mean() == 1.0
    w_stiff, _ = finetune_head(emb, labels, kernel, bias, steps=100, lr=0.05, l2=10.0)
    assert np.abs(w_stiff - kernel).max() < np.abs(w - kernel).max() / 5


def test_running_sums_give_the_prototypes_of_the_classes_with_enough_windows() -> None:
    rng = np.random.default_rng(3)
    emb, labels, _ = clusters(rng, 5)
    keep = labels != 1
    keep[np.flatnonzero(labels == 2)[2:]] = False  # class 2: two windows, below min_windows
    running = PrototypeSums(C, D)
    assert running.prototypes() is None
    for e, label in zip(emb[keep], labels[keep], strict=True):
        running.add(e, int(label))
    got = running.prototypes(min_windows=3)
    enough = keep & (labels != 2)
    want = fit_prototypes(emb[enough], labels[enough], C)
    assert got.present.tolist() == [True, False, False, True]
    np.testing.assert_allclose(got.means, want.means)
    np.testing.assert_allclose(got.centre, want.centre)
    assert running.counts.tolist() == [5, 0, 2, 5]
    running.clear()
    assert running.prototypes() is None and not running.sums.any()
