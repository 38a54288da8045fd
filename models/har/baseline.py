"""A classical baseline for HAR: hand-made window features + gradient boosting.

It answers "is the neural network worth it?" on the same subject split. Features per
window follow the WISDM papers' spirit: per-axis and magnitude statistics, percentiles,
mean absolute deviation, jerk, axis correlations and coarse spectral energies.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def window_features(x: np.ndarray) -> np.ndarray:
    """``(n, window, 3)`` windows -> ``(n, features)`` float32 feature matrix."""
    x = np.asarray(x, np.float64)
    mag = np.linalg.norm(x, axis=2, keepdims=True)
    sig = np.concatenate([x, mag], axis=2)  # x, y, z, |a|
    centred = sig - sig.mean(axis=1, keepdims=True)
    feats = [
        sig.mean(axis=1),
        sig.std(axis=1),
        sig.min(axis=1),
        sig.max(axis=1),
        *np.percentile(sig, [10, 25, 50, 75, 90], axis=1),
        np.abs(centred).mean(axis=1),
        np.abs(np.diff(sig, axis=1)).mean(axis=1),
    ]
    std = centred.std(axis=1) + 1e-9
    for i, j in ((0, 1), (0, 2), (1, 2)):
        feats.append(
            ((centred[:, :, i] * centred[:, :, j]).mean(axis=1) / (std[:, i] * std[:, j]))[:, None]
        )
    spectrum = np.abs(np.fft.rfft(centred, axis=1)) ** 2
    bands = np.array_split(np.arange(1, spectrum.shape[1]), 6)
    total = spectrum[:, 1:].sum(axis=1) + 1e-9
    for band in bands:
        feats.append(spectrum[:, band].sum(axis=1) / total)
    feats.append(np.log1p(total))
    feats.append(spectrum[:, 1:].argmax(axis=1).astype(np.float64))
    return np.concatenate(feats, axis=1).astype(np.float32)


def fit_boosting(features: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Any, float]:
    """Fit histogram gradient boosting on a feature matrix; return ``(model, seconds)``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    start = time.perf_counter()
    model = HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.1, early_stopping=False, random_state=seed
    )
    model.fit(features, y)
    return model, time.perf_counter() - start


def train_baseline(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Any, float]:
    """Fit histogram gradient boosting on window features; return ``(model, seconds)``."""
    return fit_boosting(window_features(x), y, seed)


def predict_baseline(model: Any, x: np.ndarray) -> np.ndarray:
    """Class predictions of a fitted baseline for ``(n, window, 3)`` windows."""
    return model.predict(window_features(x))
