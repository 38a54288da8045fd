"""Score a forecaster: its MSE beside the naive forecast "the next value equals the last one"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def mse_report(pred: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MSE of ``pred``, of the naive last-value forecast, and their ratio (< 1: better)."""
    mse = float(np.mean((pred - y) ** 2))
    naive = float(np.mean((x[:, -1] - y) ** 2))
    return {"mse": mse, "naive_mse": naive, "ratio_to_naive": mse / naive if naive else np.inf}


def score_forecaster(
    forward: Callable[[Any, np.ndarray], Any], params: Any, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """:func:`mse_report` of ``forward`` on windows ``x`` and the next values ``y``,
    with the number of windows scored."""
    from harstream.models import training

    report = mse_report(training.predict_batches(forward, params, x), x, y)
    report["windows"] = len(y)
    return report
