"""The HAR model shipped in the package loads, predicts, and holds up on unseen subjects."""

from __future__ import annotations

import numpy as np

from harstream.models.har.data import load_recordings
from harstream.models.har.windows import make_windows

CLASSES = ["walking", "jogging", "stairs", "sitting", "standing", "kicking"]


def test_shipped_model_loads_and_predicts(shipped_har_predictor):
    assert shipped_har_predictor.tag.startswith("har-cnn@")
    assert shipped_har_predictor.labels == CLASSES
    meta = shipped_har_predictor.meta
    assert meta["arch"] == "har-cnn" and meta["window"] == 80
    assert len(meta["normalization"]["mean"]) == 3
    assert set(meta["training"]["split"]["test"]).isdisjoint(meta["training"]["split"]["train"])
    x = np.random.default_rng(0).normal(0, 3, size=(5, 240)).astype(np.float32)
    probs = shipped_har_predictor.predict(x)
    assert probs.shape == (5, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_shipped_model_on_two_held_out_subjects(shipped_har_predictor, shared_data):
    """Subjects the shipped model never saw in training or validation."""
    test_subjects = shipped_har_predictor.meta["training"]["split"]["test"][:2]
    folder = shared_data / "wisdm2019-watch-accel-6"
    recordings = []
    for subject in test_subjects:
        recordings += load_recordings(folder / f"data_{subject}_accel_watch.txt").recordings
    windows = make_windows(recordings)
    predicted = np.asarray(CLASSES)[shipped_har_predictor.predict(windows.x).argmax(axis=1)]
    accuracy = float((predicted == windows.labels).mean())
    assert accuracy > 0.7, f"accuracy {accuracy:.3f} on held-out subjects {test_subjects}"
