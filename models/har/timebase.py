"""Timestamps to seconds: the one rule the file loaders and the live service share.

Apps and devices stamp readings in seconds, milliseconds (JavaScript's ``Date.now()``,
Android's ``currentTimeMillis``), microseconds or nanoseconds (Android's sensor events,
the WISDM recordings), counted from 1970 (unix time) or from the device's start. The unit
is read from two pieces of evidence, and the larger unit either one points to wins:

- the size of the largest time: seconds end at :data:`MAX_TIME_S` (2100-01-01, 4.1e9),
  so a larger time is milliseconds up to 4.1e12, microseconds up to 4.1e15, nanoseconds
  up to 4.1e18 (a unix time now is 1.7e9 s, 1.7e12 ms, 1.7e15 us, 1.7e18 ns). A time
  since the device's start is small in any unit, so size alone cannot tell its unit;
- the median step between consecutive increasing times, when there are two or more: an
  accelerometer samples at 5 to 1000 Hz, every 0.001 to 0.2 s, which is 1 to 200 in
  milliseconds, 1,000 to 200,000 in microseconds and 1e6 to 2e8 in nanoseconds. The
  ranges do not overlap; the bounds between them are :data:`STEP_BOUNDS`.

A file's times are judged together (a recording); a live message's times are judged per
message (see docs/contract.md, "Time units").
"""

from __future__ import annotations

import numpy as np

# Seconds from 0 to 2100-01-01: unix time, or time since the device started. The upper
# bound also keeps a 50 ms step representable (float64 resolves 0.5 us there).
MAX_TIME_S = 4_102_444_800.0
SCALES = (1.0, 1e3, 1e6, 1e9)  # units per second: s, ms, us, ns
UNIT_NAMES = {1.0: "s", 1e3: "ms", 1e6: "us", 1e9: "ns"}
# A median step at or above each bound means the next unit: between the largest step of a
# unit (0.2 s at 5 Hz: 0.2 s, 200 ms, 2e5 us) and the smallest of the next (1 ms at
# 1000 Hz: 1 ms, 1,000 us, 1e6 ns). 1 for s -> ms, as the loaders always used.
STEP_BOUNDS = (1.0, 500.0, 5e5)


def scale_by_size(largest: float) -> float:
    """The smallest unit (units per second) in which ``largest`` is at most 2100-01-01.

    A time too large for nanoseconds, or not a number, gets 1 (seconds): the caller's range
    check then refuses it with the value as sent.
    """
    for scale in SCALES:
        if largest <= MAX_TIME_S * scale:
            return scale
    return 1.0


def scale_by_step(step: float) -> float:
    """The unit (units per second) of times whose typical step is ``step``."""
    scale = 1.0
    for bound, unit in zip(STEP_BOUNDS, SCALES[1:], strict=True):
        if step >= bound:
            scale = unit
    return scale


def time_scale(t: np.ndarray) -> float:
    """Units per second of the timestamps ``t`` (1, 1e3, 1e6 or 1e9), by the rule above."""
    if t.size == 0:
        return 1.0
    scale = scale_by_size(float(t.max()))
    if t.size > 1:
        steps = np.diff(t)
        steps = steps[steps > 0]
        if steps.size:
            scale = max(scale, scale_by_step(float(np.median(steps))))
    return scale


def to_seconds(t: np.ndarray) -> np.ndarray:
    """``t`` in seconds (``t`` itself when it is in seconds already)."""
    scale = time_scale(t)
    return t if scale == 1.0 else t / scale
