"""Cut recordings into fixed-length windows that never straddle a boundary.

A window mixing two people, two activities or the two sides of a recording gap would
teach (and score) the model on signals that never occur, so windows are cut inside
"segments": maximal runs of one recording with one label and no time gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from harstream.models.har.data import Recording

# The HAR input contract shared by models, the service and the tools (kept free of JAX so
# that command-line tools import it cheaply).
WINDOW = 80  # samples per window: 4 s at 20 Hz
AXES = 3  # x, y, z
RATE_HZ = 20.0  # the models' sample rate; faster devices are resampled to it
DEFAULT_HOP = 40
MAX_GAP_S = 0.25  # 5 sample periods at 20 Hz; a larger (or negative) step breaks a segment


@dataclass
class Windows:
    """``x``: ``(n, window, 3)`` float32; ``labels``, ``subjects``: ``(n,)`` str.

    An unlabelled window has the label ``""``.
    """

    x: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, mask: np.ndarray) -> Windows:
        """The windows where ``mask`` is true."""
        return Windows(self.x[mask], self.labels[mask], self.subjects[mask])

    def of_subjects(self, subjects: Iterable[str]) -> Windows:
        """The windows of the given subjects."""
        return self.select(np.isin(self.subjects, list(subjects)))


def segments(rec: Recording, max_gap_s: float = MAX_GAP_S) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of ``rec`` with one label and no time gap."""
    n = len(rec)
    if n == 0:
        return []
    breaks = np.zeros(n, bool)  # breaks[i]: a new segment starts at sample i
    breaks[0] = True
    if rec.labels is not None:
        breaks[1:] |= rec.labels[1:] != rec.labels[:-1]
    if rec.t is not None:
        step = np.diff(rec.t)
        breaks[1:] |= (step < 0) | (step > max_gap_s)
    starts = np.flatnonzero(breaks)
    stops = np.append(starts[1:], n)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def make_windows(
    recordings: Sequence[Recording],
    window: int = WINDOW,
    hop: int = DEFAULT_HOP,
    max_gap_s: float = MAX_GAP_S,
) -> Windows:
    """Windows of ``window`` samples every ``hop`` samples inside each segment.

    The label of a window is its segment's single activity; the subject is the
    recording's ``key`` (``subject`` or ``subject/device``). Segments shorter than
    ``window`` yield nothing.
    """
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1, got window={window}, hop={hop}")
    xs: list[np.ndarray] = []
    labels: list[str] = []
    subjects: list[str] = []
    for rec in recordings:
        for start, stop in segments(rec, max_gap_s):
            if stop - start < window:
                continue
            starts = np.arange(start, stop - window + 1, hop)
            idx = starts[:, None] + np.arange(window)[None, :]
            xs.append(rec.xyz[idx])
            label = "" if rec.labels is None else str(rec.labels[start])
            labels.extend([label] * len(starts))
            subjects.extend([rec.key] * len(starts))
    if not xs:
        return Windows(np.zeros((0, window, 3), np.float32), np.array([], str), np.array([], str))
    return Windows(
        np.concatenate(xs).astype(np.float32, copy=False),
        np.asarray(labels, dtype=str),
        np.asarray(subjects, dtype=str),
    )
