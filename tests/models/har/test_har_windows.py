"""Windowing never crosses a subject, label or time-gap boundary."""

from __future__ import annotations

import numpy as np
import pytest

from harstream.models.har.data import Recording
from harstream.models.har.windows import make_windows, segments


def recording(n: int, labels=None, t=None, subject: str = "s1") -> Recording:
    xyz = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    labels = np.asarray(labels if labels is not None else ["walking"] * n, dtype=object)
    return Recording("gen", subject, None, xyz, None if t is None else np.asarray(t), labels)


def test_hop_and_window_positions():
    rec = recording(200)
    w = make_windows([rec], window=80, hop=40)
    assert w.x.shape == (4, 80, 3)  # starts 0, 40, 80, 120
    np.testing.assert_array_equal(w.x[1], rec.xyz[40:120])
    assert make_windows([rec], hop=80).x.shape[0] == 2
    assert make_windows([rec], hop=1).x.shape[0] == 121
    assert w.labels.tolist() == ["walking"] * 4 and w.subjects.tolist() == ["s1"] * 4


def test_label_change_splits_windows():
    rec = recording(200, labels=["walking"] * 100 + ["jogging"] * 100)
    w = make_windows([rec], hop=40)
    assert w.labels.tolist() == ["walking", "jogging"]
    np.testing.assert_array_equal(w.x[1], rec.xyz[100:180])
    assert segments(rec) == [(0, 100), (100, 200)]


def test_time_gap_and_backwards_time_split_windows():
    t = np.arange(300) * 0.05
    t[100:] += 5.0  # a 5 s gap before sample 100
    t[200:] -= 20.0  # the clock jumps back before sample 200
    rec = recording(300, t=t)
    assert segments(rec) == [(0, 100), (100, 200), (200, 300)]
    w = make_windows([rec], hop=40)
    assert len(w) == 3
    np.testing.assert_array_equal(w.x[2], rec.xyz[200:280])
    small_jitter = np.arange(200) * 0.05 + np.random.default_rng(0).uniform(0, 0.01, 200)
    assert len(segments(recording(200, t=np.sort(small_jitter)))) == 1


def test_short_recordings_and_subjects_never_join():
    a, b = recording(60, subject="a"), recording(60, subject="b")
    w = make_windows([a, b])
    assert w.x.shape == (0, 80, 3) and len(w) == 0
    c = recording(80, subject="c")
    assert make_windows([a, c, b]).subjects.tolist() == ["c"]


def test_unlabelled_windows_and_subject_selection():
    rec = Recording("gen", "dev", "watch", np.zeros((160, 3), np.float32), None, None)
    w = make_windows([rec, recording(80, subject="s2")])
    assert w.labels.tolist() == ["", "", "", "walking"]
    assert w.subjects.tolist() == ["dev/watch"] * 3 + ["s2"]
    assert len(w.of_subjects(["s2"])) == 1


def test_bad_parameters():
    with pytest.raises(ValueError, match="hop"):
        make_windows([recording(100)], hop=0)
