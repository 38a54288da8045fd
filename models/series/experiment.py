"""The article's LSTM-vs-MLP lag experiment, and the long-lag test of its conclusion.

Short lag (the article): the input is the counting sequence x_i = i and the target
y_i = x_i + 0.5 x_(i-1) + 0.2 x_(i-2) + 0.1 x_(i-3). The LSTM reads the last 5 values,
the MLP one value. Because x is deterministic, one value already determines y
(y = 1.8 x - 1.2), so the MLP should do at least as well as the LSTM.

Long lag (the article's claim that LSTMs win when the dependency reaches further back):
x is white noise and y_t = x_t + 0.5 x_(t-L) with L of 20 or 50 steps. The MLP on one
value cannot see x_(t-L) at all; the LSTM reads a window of L + 1 steps. An MLP given the
same L + 1 values is added, to separate "sees further back" from "is recurrent".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harstream.models.series import network
from harstream.models.series.training import global_normalization, train

SHORT_LAG_WEIGHTS = (1.0, 0.5, 0.2, 0.1)
LONG_LAGS = (20, 50)


@dataclass
class Case:
    """One model on one data set: test MSE in the target's units and relative to its variance."""

    data: str
    model: str
    window: int
    mse: float
    relative_mse: float
    errors: np.ndarray
    epochs: int


def windows(x: np.ndarray, k: int) -> np.ndarray:
    """All length-``k`` windows of ``x``: row j ends at ``x[j + k - 1]``."""
    return np.lib.stride_tricks.sliding_window_view(x, k).astype(np.float32)


def short_lag_data(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The article's data: ``(x, y)`` with x = 0..n-1 and y the weighted sum of 4 lags."""
    x = np.arange(n, dtype=np.float64)
    y = np.full(n, np.nan)
    for t in range(len(SHORT_LAG_WEIGHTS) - 1, n):
        y[t] = sum(w * x[t - j] for j, w in enumerate(SHORT_LAG_WEIGHTS))
    return x, y


def long_lag_data(lag: int, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """White-noise ``x`` and ``y_t = x_t + 0.5 x_(t-lag)`` (NaN where the lag is unavailable)."""
    x = np.random.default_rng(seed).standard_normal(n)
    y = np.full(n, np.nan)
    y[lag:] = x[lag:] + 0.5 * x[:-lag]
    return x, y


def supervised(x: np.ndarray, y: np.ndarray, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``k`` inputs ending at t and targets y_t, for t >= ``start`` (any k)."""
    w = windows(x, k)[start - k + 1 :]
    return w, y[start:].astype(np.float32)


def split(
    n: int, seed: int, fractions: tuple[float, float] = (0.7, 0.15)
) -> tuple[np.ndarray, ...]:
    """Seeded random train/validation/test row indices."""
    order = np.random.default_rng(seed).permutation(n)
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    return order[:a], order[a:b], order[b:]


def run_case(
    data: str,
    x: np.ndarray,
    y: np.ndarray,
    arch: str,
    k: int,
    start: int,
    *,
    seed: int,
    epochs: int,
    patience: int = 40,
) -> Case:
    """Train ``arch`` with window ``k`` on ``(x, y)`` and measure it on the held-out rows."""
    xs, ys = supervised(x, y, k, start)
    tr, va, te = split(len(ys), seed)
    model = network.build(arch, {"window": k})
    norm = global_normalization(xs[tr], ys[tr])
    result = train(
        model, norm, (xs[tr], ys[tr]), (xs[va], ys[va]), epochs=epochs, patience=patience, seed=seed
    )
    pred = np.asarray(network.make_forward(model, norm)(result.params, xs[te]))
    errors = pred - ys[te]
    mse = float(np.mean(errors**2))
    order = np.argsort(te)
    return Case(data, arch, k, mse, mse / float(np.var(ys[te])), errors[order], result.best_epoch)


def run(
    seed: int = 0,
    epochs: int = 300,
    long_lags: tuple[int, ...] = LONG_LAGS,
    n: int = 1000,
    patience: int = 40,
) -> list[Case]:
    """Every case of the experiment: the article's short lag, then each long lag."""
    fit = {"seed": seed, "epochs": epochs, "patience": patience}
    start = max(len(SHORT_LAG_WEIGHTS), 5) - 1
    x, y = short_lag_data(n)
    label = "x=i, y=i+.5(i-1)+.2(i-2)+.1(i-3)"
    cases = [
        run_case(label, x, y, "series-mlp", 1, start, **fit),
        run_case(label, x, y, "series-lstm", 5, start, **fit),
    ]
    for lag in long_lags:
        x, y = long_lag_data(lag, n=3 * n, seed=seed)
        label = f"noise x, y=x(t)+.5x(t-{lag})"
        for arch, k in (("series-mlp", 1), ("series-lstm", lag + 1), ("series-mlp", lag + 1)):
            cases.append(run_case(label, x, y, arch, k, lag, **fit))
    return cases


def table(cases: list[Case]) -> str:
    """A Markdown table of the results (also readable in a terminal)."""
    lines = [
        "| data | model | input window | test MSE | MSE / var(y) | best epoch |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        lines.append(
            f"| {c.data} | {c.model} | {c.window} | {c.mse:.4g} "
            f"| {c.relative_mse:.3g} | {c.epochs} |"
        )
    return "\n".join(lines)


def plot(cases: list[Case], path: str | Path) -> Path:
    """Prediction errors on the test rows, one panel per data set (like the article's plot)."""
    from harstream.models.figures import pyplot, save_figure

    plt = pyplot()

    groups = list(dict.fromkeys(c.data for c in cases))
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 2.8 * len(groups)), squeeze=False)
    for ax, name in zip(axes[:, 0], groups, strict=True):
        for c in (c for c in cases if c.data == name):
            ax.plot(c.errors, lw=0.8, label=f"{c.model} (k={c.window}), MSE {c.mse:.3g}")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("prediction - target")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("test example (in sequence order)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
