"""Timing of model calls: warm-up, repeated calls, percentiles, throughput.

Every runtime is timed the same way: the callable must return a host (NumPy) array, so
that asynchronous dispatch (JAX) cannot make a call look faster than it is. On a shared
machine, load from other processes comes and goes; runtimes compared with each other are
therefore timed in interleaved rounds, so that a burst of outside load hits all of them
rather than whichever happened to be running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Call = Callable[[np.ndarray], np.ndarray]
WARMUP_CAP_S = 1.0


@dataclass
class Timing:
    """Wall-clock seconds of each timed call of one runtime at one batch size."""

    batch: int
    seconds: list[float] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.seconds)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the per-call latency, in milliseconds."""
        return float(np.percentile(self.seconds, q) * 1e3)

    @property
    def items_per_s(self) -> float:
        """Items processed per second of calling (batch x calls / total call time)."""
        return self.batch * self.calls / float(np.sum(self.seconds))

    def summary(self) -> dict[str, float]:
        """``p50_ms``, ``p99_ms``, ``items_per_s`` and the number of calls."""
        return {
            "p50_ms": round(self.percentile_ms(50), 4),
            "p99_ms": round(self.percentile_ms(99), 4),
            "items_per_s": round(self.items_per_s, 1),
            "calls": self.calls,
        }


def percentiles_ms(seconds: Sequence[float], qs: Sequence[float]) -> dict[str, float]:
    """``{"p50": .., "p99": ..}`` in milliseconds (NaN for an empty sequence)."""
    if len(seconds) == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    values = np.percentile(np.asarray(seconds, np.float64) * 1e3, qs)
    return {f"p{q:g}": round(float(v), 3) for q, v in zip(qs, values, strict=True)}


def time_interleaved(
    calls: Mapping[str, Call],
    x: np.ndarray,
    *,
    seconds: float,
    min_calls: int = 20,
    warmup: int = 3,
    rounds: int = 4,
    before: Mapping[str, Callable[[], None]] | None = None,
) -> dict[str, Timing]:
    """Time each callable on ``x`` for about ``seconds`` in total, in ``rounds`` alternating slices.

    Each callable gets ``warmup`` untimed calls first (fewer, but at least one, when they
    take over ``WARMUP_CAP_S``), then at least ``min_calls`` timed calls overall.
    ``before[name]``, when given, runs at the start of each of that callable's slices (e.g.
    to apply its thread setting, which is process-global in PyTorch).
    """
    if seconds <= 0 or min_calls < 1 or rounds < 1:
        raise ValueError("seconds must be > 0, min_calls and rounds >= 1")
    before = before or {}
    timings = {name: Timing(batch=int(x.shape[0])) for name in calls}
    for name, fn in calls.items():
        if name in before:
            before[name]()
        warm_until = time.perf_counter() + WARMUP_CAP_S
        for i in range(warmup):
            if i and time.perf_counter() > warm_until:
                break  # a slow configuration is warm after its first calls
            fn(x)
    slice_seconds = seconds / (rounds * len(calls))
    slice_calls = -(-min_calls // rounds)
    for _ in range(rounds):
        for name, fn in calls.items():
            if name in before:
                before[name]()
            spent, n = 0.0, 0
            while n < slice_calls or spent < slice_seconds:
                start = time.perf_counter()
                fn(x)
                elapsed = time.perf_counter() - start
                timings[name].seconds.append(elapsed)
                spent += elapsed
                n += 1
    return timings
