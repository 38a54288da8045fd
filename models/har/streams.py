"""Evaluate window classifiers "as users live it": continuous per-subject streams.

Per subject, the activity segments are concatenated (in file order and in seeded random
orders) as raw samples, and windows are cut every ``hop`` samples across the whole
stream, so windows near a change mix two activities, as they do on a real watch. A window
is labelled with the activity of its last sample (what the person is doing when the
answer is shown) and timed at its end.

Per change (a segment boundary where the activity changes) the delay is the time from
the change until the first window whose prediction equals the new activity; a change is
missed when that never happens before the next change or within ``max_delay_s``.
WISDM segments are whole seconds long, so changes fall on window ends and the earliest
possible delay is one hop (1 s, a window holding 20 samples of the new activity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harstream.models.har.data import Recording
from harstream.models.har.windows import RATE_HZ, WINDOW, segments
from harstream.models.reports import classification_report

STREAM_HOP = 20  # one window per second at 20 Hz, as the service emits them
MAX_DELAY_S = 120.0


@dataclass
class Segment:
    """One activity bout of one subject: class index and ``(n, 3)`` samples."""

    label: int
    xyz: np.ndarray


@dataclass
class Stream:
    """Windows of one subject's concatenated segments.

    ``x``: ``(n, window, 3)``; ``label``: class of each window's last sample; ``end``: the
    window's end (exclusive sample index); ``offset``: window start minus the start of the
    segment holding its last sample (negative for a window straddling a change);
    ``changes``: ``(sample, new class, stop sample)`` per change, stop = the next change
    or the stream's end.
    """

    subject: str
    order: tuple[int, ...]
    x: np.ndarray
    label: np.ndarray
    end: np.ndarray
    offset: np.ndarray
    changes: list[tuple[int, int, int]]


def subject_segments(
    recordings: Sequence[Recording], classes: Sequence[str]
) -> dict[str, list[Segment]]:
    """Each subject's labelled segments in file order (segments shorter than a window dropped).

    A subject is a recording's ``key`` (``subject`` or ``subject/device``), as in windows.
    """
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, list[Segment]] = {}
    for rec in recordings:
        if rec.labels is None:
            continue
        for start, stop in segments(rec):
            if stop - start >= WINDOW and str(rec.labels[start]) in index:
                seg = Segment(index[str(rec.labels[start])], rec.xyz[start:stop])
                out.setdefault(rec.key, []).append(seg)
    return out


def stream_orders(n_segments: int, k: int, seed: int) -> list[tuple[int, ...]]:
    """File order, then ``k`` seeded random permutations of the segments."""
    rng = np.random.default_rng(seed)
    orders = [tuple(range(n_segments))]
    orders += [tuple(int(i) for i in rng.permutation(n_segments)) for _ in range(k)]
    return orders


def build_stream(
    subject: str, segs: Sequence[Segment], order: Sequence[int], hop: int = STREAM_HOP
) -> Stream:
    """Concatenate ``segs`` in ``order`` and cut windows every ``hop`` samples."""
    parts = [segs[i] for i in order]
    xyz = np.concatenate([p.xyz for p in parts])
    lengths = np.array([len(p.xyz) for p in parts])
    seg_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sample_seg = np.repeat(np.arange(len(parts)), lengths)
    sample_label = np.repeat([p.label for p in parts], lengths)
    starts = np.arange(0, len(xyz) - WINDOW + 1, hop)
    end = starts + WINDOW
    last_seg = sample_seg[end - 1]
    stops = np.append(seg_start[1:], len(xyz))
    changes = [
        (int(seg_start[i]), int(parts[i].label), int(stops[i]))
        for i in range(1, len(parts))
        if parts[i].label != parts[i - 1].label
    ]
    return Stream(
        subject=subject,
        order=tuple(order),
        x=xyz[starts[:, None] + np.arange(WINDOW)[None, :]].astype(np.float32, copy=False),
        label=sample_label[end - 1],
        end=end,
        offset=starts - seg_start[last_seg],
        changes=changes,
    )


def change_delays(
    pred: np.ndarray, stream: Stream, max_delay_s: float = MAX_DELAY_S
) -> tuple[np.ndarray, int]:
    """Delays (s) of the changes reached and the number missed, for one stream's predictions."""
    delays, missed = [], 0
    for sample, new, stop in stream.changes:
        limit = min(stop, sample + int(round(max_delay_s * RATE_HZ)))
        inside = (stream.end - 1 >= sample) & (stream.end - 1 < limit) & (pred == new)
        if inside.any():
            delays.append((stream.end[np.argmax(inside)] - sample) / RATE_HZ)
        else:
            missed += 1
    return np.asarray(delays, np.float64), missed


def score_streams(
    streams: Sequence[Stream], preds: Sequence[np.ndarray], classes: Sequence[str]
) -> dict[str, float]:
    """Pooled accuracy, macro-F1, change delay (median, p90) and missed-change rate."""
    labels = np.concatenate([s.label for s in streams])
    report = classification_report(labels, np.concatenate(preds), classes)
    delays, missed, changes = [], 0, 0
    for stream, pred in zip(streams, preds, strict=True):
        d, m = change_delays(pred, stream)
        delays.append(d)
        missed += m
        changes += len(stream.changes)
    d = np.concatenate(delays)
    return {
        "accuracy": float(report["accuracy"]),
        "macro_f1": float(report["macro_f1"]),
        "delay_median_s": float(np.median(d)) if len(d) else float("nan"),
        "delay_p90_s": float(np.percentile(d, 90)) if len(d) else float("nan"),
        "changes": changes,
        "missed": missed,
        "missed_rate": missed / changes if changes else 0.0,
    }
