"""Timing of model calls: warm-up, repeated calls, percentiles, throughput.

Every runtime is timed the same way: the callable must return a host (NumPy) array, so
that asynchronous dispatch (JAX) cannot make a call look faster than it is. On a shared
machine, load from other processes comes and goes; runtimes compared with each other are
therefore timed in interleaved rounds, so that a burst of outside load hits all of them
rather than whichever happened to be running. A runner in another process (JAX at
another thread count, which XLA fixes per process) times its own calls the same way and
sends the seconds back, so that no inter-process traffic is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Call = Callable[[np.ndarray], np.ndarray]
WARMUP_CAP_S = 1.0


@dataclass
class Timing:
    """Wall-clock seconds of each timed call of one runtime at one batch size, and the
    process CPU seconds of them all where the runner measures it (in this process)."""

    batch: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None

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
        """``p50_ms``, ``p99_ms``, ``items_per_s``, the number of calls and, where measured,
        ``cpu_us_per_item``: CPU time is what other jobs on a shared machine disturb least
        (they take cores away, which stretches wall time, not the work a call does)."""
        out = {
            "p50_ms": round(self.percentile_ms(50), 4),
            "p99_ms": round(self.percentile_ms(99), 4),
            "items_per_s": round(self.items_per_s, 1),
            "calls": self.calls,
        }
        if self.cpu_seconds is not None:
            out["cpu_us_per_item"] = round(self.cpu_seconds / (self.calls * self.batch) * 1e6, 2)
        return out


def percentiles_ms(seconds: Sequence[float], qs: Sequence[float]) -> dict[str, float]:
    """``{"p50": .., "p99": ..}`` in milliseconds (NaN for an empty sequence)."""
    if len(seconds) == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    values = np.percentile(np.asarray(seconds, np.float64) * 1e3, qs)
    return {f"p{q:g}": round(float(v), 3) for q, v in zip(qs, values, strict=True)}


class Runner(Protocol):
    """Something to time: warmed up once per input, then timed in slices of calls."""

    def warm(self, x: np.ndarray, calls: int) -> None: ...

    def run(self, x: np.ndarray, calls: int, seconds: float) -> list[float]: ...


@dataclass
class CallRunner:
    """Times an in-process callable; ``before`` runs at the start of each warm-up and slice
    (e.g. to apply a thread setting that is process-global, as PyTorch's is).
    ``cpu_seconds`` adds up the process CPU time (all threads) of its timed slices."""

    call: Call
    before: Callable[[], None] | None = None
    cpu_seconds: float = 0.0

    def warm(self, x: np.ndarray, calls: int) -> None:
        """Up to ``calls`` untimed calls (at least one; fewer when they take over
        ``WARMUP_CAP_S``: a slow configuration is warm after its first calls)."""
        if self.before is not None:
            self.before()
        warm_until = time.perf_counter() + WARMUP_CAP_S
        for i in range(max(1, calls)):
            if i and time.perf_counter() > warm_until:
                break
            self.call(x)

    def run(self, x: np.ndarray, calls: int, seconds: float) -> list[float]:
        """Seconds of each call, for at least ``calls`` calls and ``seconds`` in total."""
        if self.before is not None:
            self.before()
        out: list[float] = []
        spent = 0.0
        cpu = time.process_time()
        while len(out) < calls or spent < seconds:
            start = time.perf_counter()
            self.call(x)
            elapsed = time.perf_counter() - start
            out.append(elapsed)
            spent += elapsed
        self.cpu_seconds += time.process_time() - cpu
        return out


def time_interleaved(
    runners: Mapping[str, Runner],
    x: np.ndarray,
    *,
    seconds: float,
    min_calls: int = 20,
    warmup: int = 3,
    rounds: int = 4,
) -> dict[str, Timing]:
    """Time each runner on ``x`` for about ``seconds`` in total, in ``rounds`` alternating slices.

    Each runner gets ``warmup`` untimed calls first, then at least ``min_calls`` timed
    calls overall, spread over the rounds.
    """
    if seconds <= 0 or min_calls < 1 or rounds < 1:
        raise ValueError("seconds must be > 0, min_calls and rounds >= 1")
    timings = {name: Timing(batch=int(x.shape[0])) for name in runners}
    for runner in runners.values():
        runner.warm(x, warmup)
    cpu = {n: r.cpu_seconds for n, r in runners.items() if isinstance(r, CallRunner)}
    slice_seconds = seconds / (rounds * len(runners))
    slice_calls = -(-min_calls // rounds)
    for _ in range(rounds):
        for name, runner in runners.items():
            timings[name].seconds += runner.run(x, slice_calls, slice_seconds)
    for name, before in cpu.items():
        timings[name].cpu_seconds = runners[name].cpu_seconds - before  # type: ignore[attr-defined]
    return timings
