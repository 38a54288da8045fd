"""Tests of harstream.models.har.wearer: streams scored end to end with a known "model".

The recordings carry their class in x, so a stand-in model can read the activity at each
window's end and answer with known probabilities and embeddings.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from harstream.models.har.data import Recording
from harstream.models.har.smoothing import CALIBRATED
from harstream.models.har.wearer import (
    calibrated_report,
    format_wearer,
    score_subject_streams,
    stream_report,
)

CLASSES = ["a", "b", "c"]
SECONDS = 60  # per activity: windows from 40 s to 56 s into each are scored


def recording(subject: str, order: list[int]) -> Recording:
    codes = np.repeat(order, SECONDS * 20)
    xyz = np.zeros((codes.size, 3), np.float32)
    xyz[:, 0] = codes
    return Recording("f", subject, None, xyz, None, np.array(CLASSES)[codes])


def confusing_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right on a and c, calls b a (0.6 vs 0.3); embeddings separate all three classes."""
    end = x[:, -1, 0].astype(int)
    probs = np.full((len(x), 3), 0.05)
    probs[np.arange(len(x)), end] = 0.9
    b = end == 1
    probs[b] = [0.6, 0.3, 0.1]
    emb = np.eye(3)[end] + 0.01 * x[:, :3, 0]  # a window's start leaks in a little
    return probs, emb


def perfect_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    end = x[:, -1, 0].astype(int)
    probs = np.full((len(x), 3), 0.01)
    probs[np.arange(len(x)), end] = 0.98
    return probs, np.eye(3)[end]


def test_calibration_on_the_first_seconds_fixes_a_confusion_the_stream_keeps() -> None:
    recs = [recording("s1", [0, 1, 2]), recording("s2", [2, 1, 0, 1])]
    scored = score_subject_streams(confusing_model, recs, ["s1", "s2"], CLASSES, orders=2, seed=3)
    assert [s.stream.subject for s in scored] == ["s1"] * 3 + ["s2"] * 3
    cal = calibrated_report(scored, len(CLASSES), 20.0)
    # 17 scored windows per activity (starts at 40..56 s), 7 activities in file order
    assert cal["windows"] == 17 * 7
    assert cal["plain_accuracy"] == pytest.approx(4 / 7)  # b is always wrong
    assert cal["plain_stream_accuracy"] == pytest.approx(4 / 7)
    assert cal["accuracy"] == 1.0 and cal["stream_accuracy"] == 1.0
    assert cal["stream_default_accuracy"] == 1.0
    assert cal["smoother"] == asdict(CALIBRATED)  # the calibrated device's, as in the service
    assert cal["calibration"] == {"tau": 0.2, "weight": 0.9} and cal["seconds"] == 20.0
    with pytest.raises(ValueError, match="between 4 .* and 40"):
        calibrated_report(scored, len(CLASSES), 41.0)


def test_stream_report_of_a_perfect_model_follows_each_change_in_one_window() -> None:
    scored = score_subject_streams(
        perfect_model, [recording("s", [0, 1, 2])], ["s"], CLASSES, orders=3, seed=0
    )
    report = stream_report(scored, CLASSES, orders=3, seed=0)
    assert report["streams"] == 4 and report["orders"] == 3
    assert report["changes"] == 4 * 2 and report["windows"] == 4 * ((180 - 4) + 1)
    assert report["raw_accuracy"] == 1.0 and report["raw_delay_s"] == {"median": 1.0, "p90": 1.0}
    assert report["missed_changes"] == 0.0 and report["missed_changes_count"] == 0
    assert 1.0 < report["delay_s"]["median"] <= 5.0  # the smoother waits a little
    assert 0.95 < report["accuracy"] < 1.0
    text = format_wearer({"stream": report})
    assert "per window" in text and "smoothed" in text and "0 (0.0 %)" in text


def test_subjects_without_segments_are_skipped_and_none_at_all_is_an_error() -> None:
    recs = [recording("s", [0, 1])]
    scored = score_subject_streams(perfect_model, recs, ["s", "ghost"], CLASSES, orders=0)
    assert len(scored) == 1 and scored[0].stream.order == (0, 1)
    with pytest.raises(ValueError, match="no subject"):
        score_subject_streams(perfect_model, recs, ["ghost"], CLASSES)
