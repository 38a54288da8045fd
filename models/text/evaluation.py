"""Score the text CNN on labelled messages, optionally only on those it never saw.

``evaluate text --held-out`` rebuilds the checkpoint's stratified split from the seed,
fractions and data hash stored in it, so it scores exactly the test messages. Accuracy
alone flatters a set that is 87% ham, so every report carries the Matthews correlation
(``mcc``) as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harstream.models.text import network
from harstream.models.text.data import (
    file_digest,
    read_labelled_texts,
    stratified_split,
    texts_to_ids,
)

EVAL_BATCH = 128


def text_report(y_true: Any, y_pred: Any, classes: Sequence[str]) -> dict[str, Any]:
    """The shared classification report plus the Matthews correlation and message count."""
    from sklearn.metrics import matthews_corrcoef

    from harstream.models import reports

    report = reports.classification_report(y_true, y_pred, classes)
    report["mcc"] = float(matthews_corrcoef(np.asarray(y_true), np.asarray(y_pred)))
    report["messages"] = len(y_true)
    return report


def held_out(meta: dict[str, Any], data: str | Path, labels: Sequence[str]) -> np.ndarray:
    """Indices of the test messages of the checkpoint's split, for the same data file."""
    info = meta.get("training", {})
    if info.get("data_sha256") != file_digest(data):
        raise ValueError(
            f"{data} is not the file this model was trained on (sha256 differs); "
            "--held-out needs the training file"
        )
    split = info["split"]
    return stratified_split(
        labels, split["seed"], split["test_fraction"], split["val_fraction"]
    ).test


def evaluate_text(
    predict: Callable[[np.ndarray], np.ndarray],
    meta: dict[str, Any],
    texts: Sequence[str],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Report of ``predict`` (token ids -> probabilities) on labelled messages.

    ``meta`` is the checkpoint's metadata (its tokenizer and classes); labels must be
    among the model's classes.
    """
    classes = meta["classes"]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the model {classes}")
    probs = predict(texts_to_ids(texts, meta))
    return text_report(list(labels), [classes[i] for i in probs.argmax(-1)], classes)


def evaluate_checkpoint(
    path: str | Path | None, data: str | Path, *, held_out_only: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(report, meta)`` of a checkpoint (the shipped one for None) on a labelled file.

    One jitted forward at a fixed batch size (a single compile) scores every message;
    ``held_out_only`` keeps just the test messages of the model's own split.
    """
    import jax

    from harstream.families import default_checkpoint
    from harstream.models import training
    from harstream.models.text import checkpoint

    model, params, meta = checkpoint.load(path or default_checkpoint("text"))
    texts, labels = read_labelled_texts(data)
    if held_out_only:
        keep = held_out(meta, data, labels)
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    forward = jax.jit(network.make_forward(model))
    batch = min(EVAL_BATCH, len(texts))
    report = evaluate_text(
        lambda ids: training.predict_batches(forward, params, ids, batch), meta, texts, labels
    )
    return report, meta
