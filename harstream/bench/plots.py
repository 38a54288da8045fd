"""PNG plots of benchmark results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harstream.bench.timing import Timing
from harstream.models.figures import pyplot, save_figure


def latency_cdf(timings: Mapping[tuple[str, str, int], Timing], out: Path) -> Path:
    """One panel per (family, batch size): the CDF of per-call latency of each runtime."""
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    families = list(dict.fromkeys(f for f, _, _ in timings))
    batches = sorted({b for _, _, b in timings})
    fig, axes = plt.subplots(
        len(families),
        len(batches),
        figsize=(3.6 * len(batches), 2.8 * len(families)),
        squeeze=False,
    )
    for i, family in enumerate(families):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            for (fam, runtime, b), timing in timings.items():
                if fam != family or b != batch:
                    continue
                ms = np.sort(np.asarray(timing.seconds) * 1e3)
                ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=runtime)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{family}, batch {batch}", fontsize=9)
            ax.set_xlabel("ms per call", fontsize=8)
            ax.set_ylabel("fraction of calls", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def e2e_curves(
    series: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, bound_ms: float | None = None
) -> Path:
    """Latency percentiles and sustained samples/s against the number of devices.

    ``series`` maps a label (``batched``, ``naive``) to e2e results (``devices``,
    ``latency_ms``, ``samples_per_s``), one per measured number of devices; ``bound_ms``
    draws the sweep's p99 bound.
    """
    plt = pyplot()
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, rows), style in zip(series.items(), ("-", "--", ":", "-."), strict=False):
        rows = sorted(rows, key=lambda r: r["devices"])
        if not rows:
            continue
        devices = [r["devices"] for r in rows]
        for q, color in (("p50", "C0"), ("p90", "C1"), ("p99", "C3")):
            values = [r["latency_ms"][q] for r in rows]
            lat.plot(devices, values, style, color=color, marker="o", label=f"{label} {q}")
        thr.plot(devices, [r["samples_per_s"] for r in rows], style, marker="o", label=label)
    if bound_ms is not None:
        lat.axhline(bound_ms, color="grey", linestyle=":", label=f"p99 bound {bound_ms:g} ms")
    lat.set_xlabel("devices")
    lat.set_ylabel("window latency (ms)")
    lat.set_yscale("log")
    lat.set_title("last sample published -> prediction received", fontsize=10)
    thr.set_xlabel("devices")
    thr.set_ylabel("samples/s sustained")
    thr.set_title("throughput", fontsize=10)
    peak = max((r["samples_per_s"] for rows in series.values() for r in rows), default=0.0)
    thr.set_ylim(0, 1.15 * peak or 1.0)
    thr.ticklabel_format(axis="y", useOffset=False, style="plain")
    for ax in (lat, thr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)
