"""The simulator's signals have the physical shape the service's model expects."""

from __future__ import annotations

import numpy as np
import pytest

from harstream.replay.pacing import Chunk
from harstream.replay.simulate import (
    ACTIVITIES,
    GRAVITY,
    PROFILES,
    Imperfections,
    SimDevice,
    sim_chunks,
    sim_device_ids,
)


def _device(activity: str, orientation: str = "wrist", seed: int = 7, **kw) -> SimDevice:
    return SimDevice("sim-t", seed=seed, activities=(activity,), orientation=orientation, **kw)


def _dominant_hz(signal: np.ndarray, rate: float) -> float:
    spectrum = np.abs(np.fft.rfft(signal - signal.mean()))
    freqs = np.fft.rfftfreq(signal.size, 1 / rate)
    return float(freqs[1:][spectrum[1:].argmax()])


@pytest.mark.parametrize("orientation", ["wrist", "pocket"])
@pytest.mark.parametrize("activity", ACTIVITIES)
def test_gravity_points_along_the_orientations_axis(activity: str, orientation: str) -> None:
    device = _device(activity, orientation)
    block = device.generate(400)
    mean = block.xyz.mean(axis=0)
    expected = np.asarray(PROFILES[activity].gravity[orientation], float)
    expected /= np.linalg.norm(expected)
    cosine = mean @ expected / np.linalg.norm(mean)
    assert cosine > 0.95, (activity, orientation, mean)
    assert abs(np.linalg.norm(mean) - GRAVITY) < 1.5
    assert set(block.labels) == {activity}


@pytest.mark.parametrize("activity", ["walking", "jogging", "stairs"])
@pytest.mark.parametrize("rate", [20.0, 50.0])
def test_gait_has_its_step_frequency(activity: str, rate: float) -> None:
    device = _device(activity, rate_hz=rate)
    block = device.generate(int(20 * rate))  # 20 s: 0.05 Hz resolution
    up = device.rotation @ np.asarray(PROFILES[activity].gravity["wrist"], float)
    vertical = block.xyz @ up
    low, high = PROFILES[activity].step_hz
    assert low <= device.step_hz <= high
    assert abs(_dominant_hz(vertical, rate) - device.step_hz) < 0.15
    magnitude = np.linalg.norm(block.xyz, axis=1)
    assert abs(_dominant_hz(magnitude, rate) - device.step_hz) < 0.15


def test_cadences_are_ordered_stairs_walking_jogging() -> None:
    hz = {a: _dominant_hz(_device(a).generate(400).xyz[:, 0], 20.0) for a in ("stairs", "walking")}
    jog = _device("jogging")
    jog_vertical = jog.generate(400).xyz @ (jog.rotation @ np.array([0.0, -1.0, 0.0]))
    assert hz["stairs"] < hz["walking"] < _dominant_hz(jog_vertical, 20.0)


def test_postures_are_quiet_and_gait_is_not() -> None:
    for posture in ("sitting", "standing"):
        assert _device(posture).generate(200).xyz.std(axis=0).max() < 0.6
    for gait in ("walking", "jogging", "stairs"):
        assert _device(gait).generate(200).xyz.std(axis=0).max() > 1.5


def test_activities_change_after_the_dwell_time() -> None:
    device = SimDevice("sim-t", seed=1, dwell=(2.0, 3.0))
    labels = device.generate(20 * 30).labels
    changes = np.flatnonzero(labels[1:] != labels[:-1])
    assert 8 <= changes.size <= 15  # one change every 2-3 s over 30 s
    assert np.all(np.diff(changes) >= 2 * 20 - 1)
    assert set(labels) <= set(ACTIVITIES)


def test_same_seed_same_signal_and_streams_continue_smoothly() -> None:
    a = SimDevice("sim-a", seed=3).generate(100)
    b = SimDevice("sim-a", seed=3).generate(100)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    device = _device("walking")
    whole = np.concatenate([device.generate(10).xyz for _ in range(40)])
    # no jump at block edges: neighbouring steps stay within the gait's usual range
    assert np.abs(np.diff(whole, axis=0)).max() < 8.0


def test_imperfections_jitter_drop_and_drift() -> None:
    clean = SimDevice("sim-c", seed=2).generate(2000)
    np.testing.assert_allclose(np.diff(clean.t_sent), 0.05)
    messy = SimDevice(
        "sim-m", seed=2, imperfections=Imperfections(jitter_ms=5.0, drop=0.2, drift_pct=3.0)
    ).generate(2000)
    assert 1400 < messy.t_sent.size < 1800  # about 20 % dropped
    ratio = (messy.t_sent[-1] - messy.t_sent[0]) / (messy.t_true[-1] - messy.t_true[0])
    assert abs(abs(ratio - 1) - 0.03) < 0.002  # the clock is 3 % off, either way
    residual = messy.t_sent - messy.t_true * ratio
    assert 0.003 < np.std(residual - residual.mean()) < 0.008  # ~5 ms jitter


def test_bad_settings_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="orientation"):
        SimDevice("sim-x", orientation="ankle")
    with pytest.raises(ValueError, match="unknown activities"):
        SimDevice("sim-x", activities=("flying",))
    with pytest.raises(ValueError, match="drop"):
        Imperfections(drop=1.0)


def test_sim_chunks_are_labelled_timed_and_due_in_order() -> None:
    device = SimDevice("sim-007", seed=0)
    chunks = sim_chunks(device, samples_per_message=8, base=1000.0, offset=0.5)
    first: list[Chunk] = [next(chunks) for _ in range(10)]
    assert all(c.device == "sim-007" and c.regular and len(c.t) == 8 for c in first)
    assert first[0].t[0] == pytest.approx(1000.5)
    dues = [c.due for c in first]
    assert dues == sorted(dues) and dues[0] == pytest.approx(0.5 + 7 / 20)
    assert all(c.labels is not None and len(c.labels) == 8 for c in first)
    assert sim_device_ids(3) == ["sim-000", "sim-001", "sim-002"]
