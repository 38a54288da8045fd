"""Score a HAR checkpoint on labelled recordings, by default on the subjects it never saw."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harstream.models.har import wearer
from harstream.models.har.training import load_windows
from harstream.models.har.windows import DEFAULT_HOP, Windows

log = logging.getLogger(__name__)


def _chosen_subjects(
    windows: Windows,
    meta: dict[str, Any],
    subjects: Sequence[str] | None,
    all_subjects: bool,
) -> list[str]:
    present = sorted({str(s) for s in windows.subjects})
    if subjects:
        missing = sorted(set(subjects) - set(present))
        if missing:
            raise ValueError(f"subject(s) {missing} not in the data; subjects are {present}")
        return sorted(subjects)
    held_out = meta.get("training", {}).get("split", {}).get("test") or []
    if not all_subjects and set(held_out) & set(present):
        return sorted(set(held_out) & set(present))
    return present


def evaluate_har(
    checkpoint_path: str | Path | None,
    data: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    all_subjects: bool = False,
    hop: int | None = None,
    stream: bool = False,
    orders: int = wearer.DEFAULT_ORDERS,
    seed: int = 0,
    calibrate_seconds: float | None = None,
    columns: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Score a HAR checkpoint (the shipped one for ``None``) on labelled data.

    Returns ``(report, subjects scored, checkpoint meta)``. Without ``subjects``, the
    checkpoint's held-out test subjects are scored when the data holds any of them (so
    the number is honest), else every subject. Windows whose activity the model does not
    know are left out with a warning. One jit-compiled batch size serves the whole data
    set (a serving ``Predictor`` would compile every bucket).

    ``stream`` adds ``report["stream"]`` and ``calibrate_seconds`` adds
    ``report["calibrated"]``: the same subjects as the wearer sees them
    (:mod:`harstream.models.har.wearer`), over file order and ``orders`` random orders.
    """
    import jax

    from harstream.families import default_checkpoint, resolve_checkpoint
    from harstream.models import reports, training
    from harstream.models.har import checkpoint

    if calibrate_seconds is not None:
        wearer.check_calibrate_seconds(calibrate_seconds)
    if orders < 0:
        raise ValueError(f"--orders must be >= 0, got {orders}")
    path = resolve_checkpoint(checkpoint_path) if checkpoint_path else default_checkpoint("har")
    model, params, meta = checkpoint.load(path)
    classes = list(meta["classes"])
    dataset = load_windows(data, hop or meta.get("hop", DEFAULT_HOP), columns)
    log.info(dataset.report.summary())
    chosen = _chosen_subjects(dataset.windows, meta, subjects, all_subjects)
    seen = sorted(set(meta.get("training", {}).get("split", {}).get("train") or []) & set(chosen))
    if seen:
        log.warning(
            "%d of the %d scored subjects were in the model's training data (%s): these "
            "figures are not of people the model never saw",
            len(seen),
            len(chosen),
            ",".join(seen[:5]) + (",..." if len(seen) > 5 else ""),
        )
    windows = dataset.windows.of_subjects(chosen)
    known = np.isin(windows.labels, classes)
    if not known.all():
        unknown = sorted(set(windows.labels[~known].tolist()))
        if not known.any():
            raise ValueError(
                f"none of the activities {unknown} in {data} is known to the model "
                f"(it knows {classes})"
            )
        log.warning(
            "left out %d window(s) of activities unknown to the model: %s",
            int((~known).sum()),
            unknown,
        )
        windows = windows.select(known)
    forward = jax.jit(checkpoint.embed_forward(model, meta))

    def embed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return training.predict_batches(forward, params, x, batch_size=512)

    probs, _ = embed(windows.x)
    predicted = [classes[i] for i in probs.argmax(axis=1)]
    report = reports.classification_report(windows.labels, predicted, classes)
    report["windows"] = len(windows)
    if stream or calibrate_seconds is not None:
        scored = wearer.score_subject_streams(
            embed, dataset.recordings, chosen, classes, orders=orders, seed=seed
        )
        if stream:
            report["stream"] = wearer.stream_report(scored, classes, orders, seed)
        if calibrate_seconds is not None:
            report["calibrated"] = wearer.calibrated_report(scored, len(classes), calibrate_seconds)
    return report, chosen, meta
