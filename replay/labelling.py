"""The labels ``harstream replay --calibrate-seconds S`` sends: the first S s of each activity.

A recording's activities are its label runs, split at time gaps exactly as the offline
evaluation splits them (:func:`harstream.models.har.windows.segments`), so the live run
labels the same samples as ``harstream evaluate har --calibrate-seconds S``. Each label is
the start/end form with the timestamps the samples were sent with, published right after
its last sample: the range then names exactly the samples meant, however late the service
reads the message, and it lies well inside the 30 s the service looks back. The
``seconds`` form would instead label from whatever reading the service happened to hold
when the label arrived (a race with the samples, on another topic).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from harstream.models.har.data import Recording
from harstream.models.har.wearer import MIN_LABEL_S
from harstream.models.har.windows import segments
from harstream.replay.pacing import Chunk, Track


class TrackLabel(NamedTuple):
    """Label ``activity`` on samples ``first..last`` (indices into the track)."""

    activity: str
    first: int
    last: int


def calibration_labels(track: Track, seconds: float) -> list[TrackLabel]:
    """One label per activity of ``track``: its samples in the activity's first ``seconds``
    (all of a shorter activity), in time order; none for an unlabelled track or an activity
    shorter than one window (the service would refuse it as ``bad_label``)."""
    if track.labels is None:
        return []
    rec = Recording(
        source="",
        subject=track.device,
        device=None,
        xyz=track.xyz,
        t=track.t_rel if track.timed else None,
        labels=track.labels,
    )
    t = track.t_rel
    half_step = 0.5 / track.rate_hz  # t_rel = i / rate_hz carries rounding either way
    out = []
    for start, stop in segments(rec):
        end = t[start] + seconds - half_step
        last = start + int(np.searchsorted(t[start:stop], end, "left")) - 1
        # a window spans 79 sample steps; 1 ms absorbs the rounding of i / rate_hz
        if t[last] - t[start] >= MIN_LABEL_S - 1.0 / track.rate_hz - 1e-3:
            out.append(TrackLabel(str(track.labels[start]), start, last))
    return out


def label_first_activity(stream: Iterator[Chunk], seconds: float) -> Iterator[Chunk]:
    """``stream`` with one label attached: on the first ``seconds`` of one activity (the
    first run of one true label that lasts that long), to the chunk that completes it."""
    activity, first, done = None, 0.0, False
    for chunk in stream:
        if not done and chunk.labels is not None:
            for label, t in zip(chunk.labels, chunk.t, strict=True):
                if label != activity:
                    activity, first = str(label), float(t)
                elif t - first >= seconds - 0.5 / chunk.rate_hz:
                    chunk.labels_after = (*chunk.labels_after, (activity, first, float(t)))
                    done = True
                    break
        yield chunk
