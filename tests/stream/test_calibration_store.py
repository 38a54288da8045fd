"""The SQLite calibration store: a real file, reopened as a restarted service would."""

from __future__ import annotations

import numpy as np

from harstream.stream.calibration_store import SavedCalibration, SqliteStore


def test_a_calibration_is_kept_per_device_for_its_model(tmp_path, caplog) -> None:
    path = tmp_path / "deep" / "calibrations.sqlite"
    rng = np.random.default_rng(0)
    saved = SavedCalibration(rng.normal(size=(6, 160)), np.array([3, 0, 0, 4, 0, 1]), 1.7e9)
    SqliteStore(path).save("wrist-1", "har-cnn@1", saved)
    store = SqliteStore(path)  # a new connection: what a restarted service opens
    got = store.load("wrist-1", "har-cnn@1")
    np.testing.assert_array_equal(got.sums, saved.sums)
    np.testing.assert_array_equal(got.counts, saved.counts)
    assert got.updated == saved.updated
    assert store.load("wrist-2", "har-cnn@1") is None
    with caplog.at_level("INFO"):
        assert store.load("wrist-1", "har-cnn@2") is None
    assert "event=calibration_ignored" in caplog.text
    store.delete("wrist-1")
    assert SqliteStore(path).load("wrist-1", "har-cnn@1") is None
