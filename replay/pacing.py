"""When each message is sent: recorded time scaled by a speed, merged across devices.

Every device stream is an iterator of ``Chunk`` s (up to K consecutive samples) whose
``due`` is the virtual time, in seconds since the run started, at which the chunk's last
sample happened. ``paced`` merges any number of such streams in due order and sleeps so
that virtual time runs ``speed`` times faster than the wall clock (``inf``: no sleeping, as
fast as the consumer takes them). Timestamps sent to the service keep the recorded spacing
whatever the speed, so the service cuts the same windows at ``--speed max`` as at 1.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from harstream.stream.families.har import DEFAULT_RATE_HZ


@dataclass
class Chunk:
    """Consecutive samples of one device, sent as one message.

    ``t``: timestamps as sent (unix seconds); ``labels``: true activity per sample, or
    ``None`` when unknown; ``regular``: the samples are exactly ``1 / rate_hz`` apart, so
    they may be sent compactly as ``t0`` + ``rate_hz``; ``labels_after``: calibration
    labels ``(activity, start, end)`` in sent timestamps, to publish after this chunk.
    """

    device: str
    due: float
    t: np.ndarray
    xyz: np.ndarray
    labels: np.ndarray | None
    rate_hz: float = DEFAULT_RATE_HZ
    regular: bool = False
    labels_after: tuple[tuple[str, float, float], ...] = ()


@dataclass
class Track:
    """One device's recording: times relative to its first sample, readings, labels."""

    device: str
    t_rel: np.ndarray
    xyz: np.ndarray
    labels: np.ndarray | None
    timed: bool  # the timestamps were recorded (else synthesized at ``rate_hz``)
    rate_hz: float = DEFAULT_RATE_HZ

    @property
    def step(self) -> float:
        """The typical sample interval."""
        steps = np.diff(self.t_rel)
        steps = steps[steps > 0]
        return float(np.median(steps)) if steps.size else 1.0 / self.rate_hz

    @property
    def period(self) -> float:
        """Seconds of recorded time one pass spans, plus one interval before the next pass."""
        return float(self.t_rel[-1]) + self.step if self.t_rel.size else 0.0

    def due_times(self, max_pause: float | None) -> np.ndarray:
        """When each sample is due (seconds from the first): recorded time, with pauses
        longer than ``max_pause`` shortened to it (and backwards steps to zero) so that a
        recording with hours between sessions does not replay hours of silence."""
        steps = np.diff(self.t_rel, prepend=self.t_rel[:1])
        return np.cumsum(np.clip(steps, 0.0, max_pause))


def parse_speed(text: str) -> float:
    """``"1"``, ``"2.5"`` or ``"max"`` (returned as ``inf``)."""
    if text.strip().lower() == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"speed must be a positive number or 'max', got {text!r}")
    return value


def stagger_offsets(count: int, spread: float) -> list[float]:
    """Start offsets that spread ``count`` copies evenly over ``spread`` seconds.

    Staggering keeps fanned-out copies of one recording from completing their windows at
    the same instant, which would be an unrealistically perfect batch for the service.
    """
    if count < 1:
        raise ValueError(f"need at least one device, got {count}")
    if spread < 0:
        raise ValueError(f"stagger must be >= 0 seconds, got {spread}")
    return [spread * i / count for i in range(count)]


def track_chunks(
    track: Track,
    *,
    device: str,
    samples_per_message: int,
    base: float,
    offset: float = 0.0,
    loop: bool = False,
    max_pause: float | None = None,
    calibration: Sequence[tuple[str, int, int]] = (),
) -> Iterator[Chunk]:
    """The recording as messages of ``samples_per_message`` samples, once or forever.

    Sample ``i`` of pass ``p`` is sent with timestamp ``base + offset + p * period +
    t_rel[i]``, so the service sees the recorded spacing (gaps included), and is due at
    ``offset`` plus its due time (see ``Track.due_times``) plus the earlier passes.
    ``calibration``: labels ``(activity, first, last)`` on sample indices, each attached
    (in sent timestamps) to the chunk holding its last sample, in every pass.
    """
    if samples_per_message < 1:
        raise ValueError(f"samples per message must be >= 1, got {samples_per_message}")
    n = track.t_rel.size
    due = track.due_times(max_pause)
    due_period = float(due[-1]) + track.step if n else 0.0
    passes = 0
    while True:
        shift = offset + passes * track.period
        due_shift = offset + passes * due_period
        for start in range(0, n, samples_per_message):
            sl = slice(start, min(start + samples_per_message, n))
            labels_after = tuple(
                (activity, base + shift + track.t_rel[first], base + shift + track.t_rel[last])
                for activity, first, last in calibration
                if sl.start <= last < sl.stop
            )
            yield Chunk(
                device=device,
                due=due_shift + float(due[sl.stop - 1]),
                t=base + shift + track.t_rel[sl],
                xyz=track.xyz[sl],
                labels=None if track.labels is None else track.labels[sl],
                rate_hz=track.rate_hz,
                regular=not track.timed,
                labels_after=labels_after,
            )
        passes += 1
        if not loop or n == 0:
            return


def paced(
    streams: Iterable[Iterator[Chunk]],
    speed: float,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Chunk]:
    """Chunks of all ``streams`` in due order, each released at ``start + due / speed``.

    Returns when every stream is exhausted or ``stop`` is set (also while waiting).
    """
    heap: list[tuple[float, int, Chunk, Iterator[Chunk]]] = []
    for index, stream in enumerate(streams):
        first = next(stream, None)
        if first is not None:
            heap.append((first.due, index, first, stream))
    heapq.heapify(heap)
    start = clock()
    while heap and not stop.is_set():
        due, index, chunk, stream = heap[0]
        if not math.isinf(speed):
            wait = start + due / speed - clock()
            if wait > 0 and stop.wait(wait):
                return
        yield chunk
        following = next(stream, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.due, index, following, stream))
