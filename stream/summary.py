"""The periodic one-line summary of a running service (``--summary-every``), from its metrics.

Every figure is a difference of the Prometheus counters the service keeps anyway
(:mod:`stream.metrics`) between two lines, so the log and ``/metrics`` cannot disagree:

    event=summary period_s=60.0 devices=12 messages=14400 messages_per_s=240.0
    windows=720 windows_per_s=12.0 latency_ms_p50=1.6 latency_ms_p99=4.3
    errors=har/malformed_json:3 drops=har/gap:99

``devices`` is ``harstream_devices_active`` (ids with a live buffer, all families);
the latency quantiles are interpolated within the buckets of ``harstream_latency_seconds``
as Prometheus' ``histogram_quantile`` does (its buckets double from 0.5 ms, so a figure is
within a factor of two of the true one; above its last bound, 5 s, ``>5000``). Errors and
drops list ``family/kind:count`` for the kinds that occurred since the last line (``0``
when none did); messages, windows, errors and drops are counts since the last line, so the
lines of a log add up to the totals on ``/metrics``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping

from harstream.stream.metrics import ServiceMetrics

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

_COUNTED = (
    "harstream_messages_total",
    "harstream_windows_classified_total",
    "harstream_errors_total",
    "harstream_drops_total",
    "harstream_latency_seconds_bucket",
)


def read(metrics: ServiceMetrics) -> dict[Sample, float]:
    """The current value of every sample the summary uses."""
    values: dict[Sample, float] = {}
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name in _COUNTED or s.name == "harstream_devices_active":
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The ``q`` quantile of a histogram given as ``{upper bound: cumulative count}``
    (``inf`` the total), linearly interpolated within its bucket; NaN when it is empty."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: at least that
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class Summary:
    """Differences of the service's counters between calls of :meth:`line`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._last = read(metrics)
        self._at = time.monotonic()

    def line(self) -> str:
        """The summary of the time since the last call (or since this object was made)."""
        now, values = time.monotonic(), read(self._metrics)
        period = max(now - self._at, 1e-9)
        last = self._last
        self._last, self._at = values, now

        def delta(key: Sample) -> float:
            return values[key] - last.get(key, 0.0)

        totals: dict[str, float] = defaultdict(float)
        devices = 0.0
        latency: dict[float, float] = defaultdict(float)
        kinds: dict[str, dict[str, float]] = {"errors": {}, "drops": {}}
        for key in values:
            name, labels = key
            label = dict(labels)
            if name == "harstream_devices_active":
                devices += values[key]
            elif name == "harstream_latency_seconds_bucket":
                latency[float(label["le"])] += delta(key)
            elif name in ("harstream_errors_total", "harstream_drops_total"):
                n = delta(key)
                if n:
                    what = label.get("kind") or label.get("reason")
                    group = "errors" if name == "harstream_errors_total" else "drops"
                    kinds[group][f"{label['family']}/{what}"] = n
            else:
                totals[name] += delta(key)
        p50, p99 = (quantile(q, latency) * 1000.0 for q in (0.5, 0.99))
        last_bound = max((b for b in latency if not math.isinf(b)), default=0.0) * 1000.0
        messages = totals["harstream_messages_total"]
        windows = totals["harstream_windows_classified_total"]
        return (
            f"event=summary period_s={period:.1f} devices={devices:.0f} "
            f"messages={messages:.0f} messages_per_s={messages / period:.1f} "
            f"windows={windows:.0f} windows_per_s={windows / period:.1f} "
            f"latency_ms_p50={_ms(p50, last_bound)} latency_ms_p99={_ms(p99, last_bound)} "
            f"errors={_by_kind(kinds['errors'])} drops={_by_kind(kinds['drops'])}"
        )


def _ms(value: float, last_bound: float) -> str:
    if math.isnan(value):
        return "-"  # no window in the period
    if value >= last_bound > 0:
        return f">{last_bound:g}"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def _by_kind(counts: Mapping[str, float]) -> str:
    if not counts:
        return "0"
    return ",".join(f"{kind}:{n:.0f}" for kind, n in sorted(counts.items()))
