"""Numeric series for the streaming forecaster: files to read, synthetic streams to train on.

The shipped forecaster must work on streams nobody has shown it, at any level and scale,
so it is trained on many generated series (seasonal sines, autocorrelated noise, trends,
random levels and scales) with per-window normalization. ``train series --data`` trains on
your own series instead.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

VALUE_COLUMNS = ("value", "y", "x")


def read_series(path: str | Path, column: str | None = None) -> np.ndarray:
    """Values from one number per line, or a CSV column (``value``/``y``/``x`` or ``column``).

    Rows whose value is not a finite number are an error naming the line: a forecaster
    trained on a silently shortened series would learn a wrong step.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no series file at {path}")
    rows = [r for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8"))) if r]
    if not rows:
        raise ValueError(f"{path} is empty")
    col = 0
    header = [c.strip().lower() for c in rows[0]]
    if not _is_number(rows[0][0]) or len(rows[0]) > 1:
        wanted = [column.lower()] if column else list(VALUE_COLUMNS)
        col = next((header.index(c) for c in wanted if c in header), -1)
        if col < 0:
            raise ValueError(f"{path}: no column {' or '.join(wanted)} in the header {rows[0]}")
        rows = rows[1:]
    values = np.empty(len(rows))
    for i, row in enumerate(rows):
        try:
            values[i] = float(row[col])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: row {i + 1} has no number in column {col + 1}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: the series holds NaN or infinite values")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def synthetic_series(
    n_series: int, length: int, seed: int = 0, ramps: float = 0.4
) -> list[np.ndarray]:
    """Varied series: 1-3 sines (periods 4-200 steps), AR(1) noise, a slow drift, level and
    scale. A share ``ramps`` of them are a piecewise-linear trend instead, with those
    wiggles on top at 0-100% (often faint: clean trends occur in real streams too)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    out = []
    for _ in range(n_series):
        y = np.zeros(length)
        for _ in range(rng.integers(1, 4)):
            period = np.exp(rng.uniform(np.log(4), np.log(200)))
            y += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        phi, sigma = rng.uniform(0.0, 0.95), rng.uniform(0.0, 0.3)
        noise = np.zeros(length)
        eps = rng.normal(0.0, sigma, length)
        for i in range(1, length):
            noise[i] = phi * noise[i - 1] + eps[i]
        y += noise + rng.normal(0.0, 0.005) * t
        if rng.random() < ramps:
            y = _ramp(rng, length) + rng.uniform(0.0, 1.0) ** 2 * y
        scale = np.exp(rng.uniform(np.log(0.01), np.log(1000)))
        out.append(rng.normal(0.0, 100.0) * scale / 10 + scale * y)
    return out


def _ramp(rng: np.random.Generator, length: int) -> np.ndarray:
    """Straight segments of 20-200 steps, each with its own slope of 0.01-2 sine amplitudes
    per step. Without them the slow drift (about 0.005 per step) is all the trend a window of
    5 values ever shows, and the model learnt to expect every rise to stop: after 20, 22,
    24, 26, 28 it forecast 28.8."""
    slopes, left = [], length
    while left > 0:
        steps = int(rng.integers(20, 201))
        slope = rng.choice((-1.0, 1.0)) * np.exp(rng.uniform(np.log(0.01), np.log(2.0)))
        slopes.append(np.full(min(steps, left), slope))
        left -= steps
    return np.concatenate([[0.0], np.cumsum(np.concatenate(slopes))[:-1]])


def next_value_pairs(series: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``k`` consecutive values and the value right after each."""
    xs, ys = [], []
    for s in series:
        if len(s) <= k:
            continue
        xs.append(np.lib.stride_tricks.sliding_window_view(s[:-1], k))
        ys.append(s[k:])
    if not xs:
        raise ValueError(f"every series is shorter than the window of {k} + 1 values")
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
