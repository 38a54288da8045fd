"""The HAR CNN computed incrementally over overlapping windows: same answers as in full,
compiled once per bucket, a fixed state per device, and no stepper where nothing is reused."""

from __future__ import annotations

import jax.monitoring
import numpy as np
import pytest

from harstream.models.har import network

ATOL = 1e-5  # float32 rounding of probabilities, far below any decision


def run_of_windows(hop: int, windows: int, devices: int, seed: int = 0) -> list[np.ndarray]:
    """``windows`` consecutive windows ``hop`` samples apart for each of ``devices`` devices:
    one ``(devices, 80, 3)`` batch per step, in m/s^2 with gravity on z."""
    rng = np.random.default_rng(seed)
    stream = rng.normal(0.0, 4.0, (devices, 80 + hop * (windows - 1), 3)).astype(np.float32)
    stream[..., 2] += 9.8
    return [stream[:, k * hop : k * hop + 80] for k in range(windows)]


@pytest.mark.parametrize("hop", [1, 10, 20, 40, 60, 61])
def test_stepping_a_run_of_windows_equals_computing_each_in_full(har_predictor, hop):
    stepper = har_predictor.stepper(hop)
    assert stepper is not None and stepper.state_shape == (62 - hop, 100)
    windows = run_of_windows(hop, 6, devices=5)
    probs, emb, state = stepper.full(windows[0])
    reference = har_predictor.predict_outputs(windows[0])
    np.testing.assert_allclose(probs, reference[0], atol=ATOL)
    for x in windows[1:]:
        probs, emb, state = stepper.step(x, state)
        ref_probs, ref_emb = har_predictor.predict_outputs(x)
        np.testing.assert_allclose(probs, ref_probs, atol=ATOL)
        np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-4 * np.abs(ref_emb).max())
        assert state.shape == (5, *stepper.state_shape) and state.dtype == np.float32


def test_a_window_stepped_from_another_devices_state_is_not_the_same(har_predictor):
    """The state matters: stepping from the wrong predecessor gives other answers, so the
    equality above is not a property of any state."""
    stepper = har_predictor.stepper(20)
    first, second = run_of_windows(20, 2, devices=2)
    _, _, state = stepper.full(first)
    right = stepper.step(second, state)[1]
    wrong = stepper.step(second, state[::-1].copy())[1]
    assert np.abs(right - wrong).max() > 1e-3


@pytest.mark.parametrize("hop", [62, 80])
def test_no_stepper_for_a_hop_that_reuses_nothing(har_predictor, hop):
    assert har_predictor.stepper(hop) is None


def test_models_without_the_split_have_no_step_forwards():
    mean, std = np.zeros(3), np.ones(3)
    assert network.make_step_forwards(network.HarLSTM(), mean, std, 20) is None
    assert network.make_step_forwards(network.HarCNN(), mean, std, 20) is not None


def test_state_bytes_per_device_are_fixed_by_the_hop(har_predictor):
    assert har_predictor.stepper(20).state_bytes == 42 * 100 * 4 == 16_800
    assert har_predictor.stepper(10).state_bytes == 52 * 100 * 4


def test_nothing_compiles_after_the_buckets_are_warm(har_predictor):
    stepper = har_predictor.stepper(20)  # compiled (or taken from an earlier test) here
    compiles: list[str] = []

    def listen(event: str, _seconds: float, **_kw: object) -> None:
        if event.endswith("backend_compile_duration"):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for n in range(1, 2 * har_predictor.max_batch + 3):
            x = np.zeros((n, 80, 3), np.float32)
            stepper.step(x, stepper.full(x)[-1])
            har_predictor.predict_outputs(x)
        assert har_predictor.stepper(20) is stepper
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
