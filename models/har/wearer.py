"""Accuracy as the wearer sees it: continuous streams, smoothed, and calibrated per person.

Per-window accuracy scores clean windows cut inside one activity. A watch sees one long
signal instead: each subject's activity segments are concatenated (in file order and in
``orders`` seeded random orders, :mod:`harstream.models.har.streams`), windows are cut
every second across the changes, each is labelled with the activity at its end and the
window posteriors go through the service's smoother (:func:`filter_sequence` with the
default :class:`SmootherParams`, the same filter step as the live :class:`SmoothingState`).
Calibrated posteriors are smoothed with :data:`CALIBRATED`, as the service smooths a
calibrated device's.

Calibration: the first ``seconds`` of each activity of a subject are that subject's labels
(windows wholly inside them, in file order); class prototypes on the CNN embedding are fitted
on them (:class:`PrototypeCalibration` with its chosen defaults) and every window starting at
least :data:`SCORE_FROM_S` into its activity is scored, so labelled and scored windows never
share a sample for ``seconds`` up to that.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harstream.models.har.calibration import PrototypeCalibration, fit_prototypes
from harstream.models.har.data import Recording
from harstream.models.har.smoothing import CALIBRATED, SmootherParams, filter_sequence
from harstream.models.har.streams import (
    STREAM_HOP,
    Stream,
    build_stream,
    score_streams,
    stream_orders,
    subject_segments,
)
from harstream.models.har.windows import RATE_HZ, WINDOW

log = logging.getLogger(__name__)

SCORE_FROM_S = 40.0  # calibrated windows are scored from this far into an activity
MIN_LABEL_S = WINDOW / RATE_HZ  # labels shorter than one window hold no window
DEFAULT_ORDERS = 10
SMOOTHER = SmootherParams()  # the live service's default settings, for uncalibrated input

# (n, 80, 3) windows -> ((n, C) probabilities, (n, D) embeddings)
Embed = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ScoredStream:
    """A stream (its samples dropped) with the model's outputs for its windows."""

    stream: Stream
    probs: np.ndarray
    emb: np.ndarray
    smoothed: np.ndarray


def scored_after_labels(seconds_into: np.ndarray | float) -> np.ndarray:
    """Whether a window starting ``seconds_into`` its activity is scored after calibration
    (offline here, live by ``harstream replay --calibrate-seconds``): from
    :data:`SCORE_FROM_S` on, so no scored window shares a sample with the labels."""
    return np.asarray(seconds_into) >= SCORE_FROM_S


def subject_seed(seed: int, subject: str) -> int:
    """The segment-order seed of one subject: stable across runs and subject selections."""
    return seed + zlib.crc32(subject.encode())


def subject_streams(
    recordings: Sequence[Recording],
    subjects: Sequence[str],
    classes: Sequence[str],
    *,
    orders: int = DEFAULT_ORDERS,
    seed: int = 0,
) -> Iterator[Stream]:
    """Each subject's streams: file order first, then ``orders`` random orders.

    A subject is a recording's ``key`` (``subject`` or ``subject/device``), as in windows.
    """
    segs = subject_segments([r for r in recordings if r.key in set(subjects)], classes)
    for subject in subjects:
        if subject not in segs:
            log.warning("subject %s has no labelled segment of a window or more", subject)
            continue
        for order in stream_orders(len(segs[subject]), orders, subject_seed(seed, subject)):
            yield build_stream(subject, segs[subject], order, hop=STREAM_HOP)


def scored_stream(stream: Stream, probs: np.ndarray, emb: np.ndarray) -> ScoredStream:
    """``stream`` with its windows' outputs and their smoothing; its samples dropped to keep
    memory to the outputs."""
    stream.x = stream.x[:0]
    return ScoredStream(stream, probs, emb, filter_sequence(probs, SMOOTHER))


def score_subject_streams(
    embed: Embed,
    recordings: Sequence[Recording],
    subjects: Sequence[str],
    classes: Sequence[str],
    *,
    orders: int = DEFAULT_ORDERS,
    seed: int = 0,
) -> list[ScoredStream]:
    """Each subject's streams (:func:`subject_streams`), scored by ``embed``."""
    out = []
    for stream in subject_streams(recordings, subjects, classes, orders=orders, seed=seed):
        out.append(scored_stream(stream, *embed(stream.x)))
    if not out:
        raise ValueError("no subject has a labelled segment of a window or more")
    return out


def _file_order(s: ScoredStream) -> bool:
    return s.stream.order == tuple(range(len(s.stream.order)))


def _delays(scores: dict[str, float]) -> dict[str, float | None]:
    if not scores["changes"] or scores["missed"] == scores["changes"]:
        return {"median": None, "p90": None}
    return {"median": scores["delay_median_s"], "p90": scores["delay_p90_s"]}


def stream_report(
    scored: Sequence[ScoredStream], classes: Sequence[str], orders: int, seed: int
) -> dict[str, Any]:
    """Smoothed stream accuracy, macro-F1, change delay and missed changes; raw beside them."""
    streams = [s.stream for s in scored]
    raw = score_streams(streams, [s.probs.argmax(axis=1) for s in scored], classes)
    smoothed = score_streams(streams, [s.smoothed.argmax(axis=1) for s in scored], classes)
    return {
        "accuracy": smoothed["accuracy"],
        "macro_f1": smoothed["macro_f1"],
        "delay_s": _delays(smoothed),
        "missed_changes": smoothed["missed_rate"],
        "missed_changes_count": smoothed["missed"],
        "changes": smoothed["changes"],
        "raw_accuracy": raw["accuracy"],
        "raw_macro_f1": raw["macro_f1"],
        "raw_delay_s": _delays(raw),
        "raw_missed_changes": raw["missed_rate"],
        "raw_missed_changes_count": raw["missed"],
        "orders": orders,
        "seed": seed,
        "streams": len(streams),
        "windows": int(sum(len(s.label) for s in streams)),
        "hop_s": STREAM_HOP / RATE_HZ,
        "smoother": asdict(SMOOTHER),
    }


def check_calibrate_seconds(seconds: float) -> None:
    """Labels must hold a window and must end before the scored windows begin."""
    if not MIN_LABEL_S <= seconds <= SCORE_FROM_S:
        raise ValueError(
            f"--calibrate-seconds must be between {MIN_LABEL_S:g} (one window) and "
            f"{SCORE_FROM_S:g} (where scored windows begin), got {seconds:g}"
        )


def calibrated_report(
    scored: Sequence[ScoredStream],
    n_classes: int,
    seconds: float,
) -> dict[str, Any]:
    """Accuracy on windows >= :data:`SCORE_FROM_S` into an activity: plain, calibrated on
    the subject's first ``seconds`` of each activity (file order), and each smoothed (the
    calibrated ones with :data:`CALIBRATED`, and with the defaults for comparison).

    Scored windows lie inside one activity, so they are the same in every order and so are
    their plain and calibrated answers; the smoothed ones differ with what came before.
    """
    check_calibrate_seconds(seconds)
    calibration = PrototypeCalibration()
    fits = {}
    for s in filter(_file_order, scored):
        labelled = (s.stream.offset >= 0) & (s.stream.offset + WINDOW <= seconds * RATE_HZ)
        fits[s.stream.subject] = fit_prototypes(
            s.emb[labelled], s.stream.label[labelled], n_classes
        )
    keys = ("plain", "plain_stream", "cal", "stream", "stream_default")
    hits: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for s in scored:
        mask = scored_after_labels(s.stream.offset / RATE_HZ)
        truth = s.stream.label[mask]
        calibrated = calibration.apply(fits[s.stream.subject], s.emb, s.probs)
        for key, probs in (
            ("plain", s.probs),
            ("plain_stream", s.smoothed),
            ("cal", calibrated),
            ("stream", filter_sequence(calibrated, CALIBRATED)),
            ("stream_default", filter_sequence(calibrated, SMOOTHER)),
        ):
            hits[key].append(probs[mask].argmax(axis=1) == truth)
    pooled = {k: np.concatenate(v) for k, v in hits.items()}
    n = int(
        sum(
            scored_after_labels(s.stream.offset / RATE_HZ).sum()
            for s in filter(_file_order, scored)
        )
    )
    if n == 0:
        log.warning(
            "no window starts %g s or more into an activity: nothing calibrated", SCORE_FROM_S
        )

    def acc(key: str) -> float | None:
        return float(pooled[key].mean()) if n else None

    return {
        "accuracy": acc("cal"),
        "stream_accuracy": acc("stream"),  # smoothed with CALIBRATED, as the service does
        "stream_default_accuracy": acc("stream_default"),  # with the uncalibrated defaults
        "plain_accuracy": acc("plain"),
        "plain_stream_accuracy": acc("plain_stream"),
        "seconds": seconds,
        "score_from_s": SCORE_FROM_S,
        "windows": n,  # in file order; the smoothed accuracies pool every order
        "calibration": asdict(calibration),
        "smoother": asdict(CALIBRATED),
    }


def _seconds(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def format_wearer(report: dict[str, Any]) -> str:
    """The ``stream`` and ``calibrated`` parts of an evaluation report as a short table."""
    lines = []
    stream = report.get("stream")
    if stream:
        lines.append(
            f"as the wearer sees it: file order + {stream['orders']} random order(s) per "
            f"subject, {stream['streams']} streams, {stream['windows']:,} windows "
            f"(one per {stream['hop_s']:g} s), {stream['changes']} changes"
        )
        lines.append(f"{'':<16}{'accuracy':>9}{'macro F1':>10}{'delay p50':>11}{'p90':>7}  missed")
        for title, pre in (("per window", "raw_"), ("smoothed", "")):
            delay = stream[f"{pre}delay_s"]
            lines.append(
                f"{title:<16}{stream[f'{pre}accuracy']:9.3f}{stream[f'{pre}macro_f1']:10.3f}"
                f"{_seconds(delay['median'], ' s'):>11}{_seconds(delay['p90'], ' s'):>7}  "
                f"{stream[f'{pre}missed_changes_count']} "
                f"({100 * stream[f'{pre}missed_changes']:.1f} %)"
            )
    cal = report.get("calibrated")
    if cal:
        if cal["windows"] == 0:
            lines.append(
                f"calibrated: n/a (no window starts {cal['score_from_s']:g} s into an activity)"
            )
        else:
            lines.append(
                f"calibrated on the first {cal['seconds']:g} s of each activity, "
                f"{cal['windows']:,} windows >= {cal['score_from_s']:g} s into one: "
                f"plain {cal['plain_accuracy']:.3f}, smoothed {cal['plain_stream_accuracy']:.3f}, "
                f"calibrated {cal['accuracy']:.3f}, calibrated + smoothed "
                f"{cal['stream_accuracy']:.3f} (with the default smoother "
                f"{cal['stream_default_accuracy']:.3f})"
            )
    return "\n".join(lines)
