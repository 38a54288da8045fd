"""Tests of harstream.models.har.smoothing (real numbers, synthetic streams and embeddings)."""

import numpy as np
import pytest

from harstream.models.har.smoothing import (
    CALIBRATED,
    DeviceSmoother,
    SmootherParams,
    SmoothingState,
    filter_sequence,
    filter_step,
    temper,
    windows_to_switch,
)

C = 6
PARAMS = SmootherParams(p_stay=0.97, beta=0.5)


def confident(label: int, p: float = 0.9, n: int = 1) -> np.ndarray:
    probs = np.full((n, C), (1.0 - p) / (C - 1))
    probs[:, label] = p
    return probs


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = np.exp(rng.normal(size=(*shape, C)) * 3)
    return z / z.sum(axis=-1, keepdims=True)


def test_outputs_are_distributions() -> None:
    rng = np.random.default_rng(0)
    state = SmoothingState(C, PARAMS, n_devices=50)
    for i in range(100):
        out = state.update(random_probs(rng, (50,)), float(i))
        assert np.all(out >= 0)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


def test_temper_flattens_and_keeps_order() -> None:
    p = np.array([0.7, 0.2, 0.1])
    t = temper(p, 0.5)
    np.testing.assert_allclose(t.sum(), 1.0)
    assert t[0] < 0.7 and t[2] > 0.1
    assert list(np.argsort(t)) == list(np.argsort(p))
    np.testing.assert_allclose(temper(p, 1.0), p, rtol=1e-12)


def test_output_at_t_ignores_later_inputs() -> None:
    rng = np.random.default_rng(1)
    a = random_probs(rng, (60,))
    b = a.copy()
    b[30:] = random_probs(rng, (30,))
    np.testing.assert_array_equal(filter_sequence(a, PARAMS)[:30], filter_sequence(b, PARAMS)[:30])
    assert not np.allclose(filter_sequence(a, PARAMS)[30:], filter_sequence(b, PARAMS)[30:])


def test_online_state_matches_offline_filter() -> None:
    rng = np.random.default_rng(2)
    probs = random_probs(rng, (40,))
    state = SmoothingState(C, PARAMS)
    online = np.stack([state.update(p, float(i))[0] for i, p in enumerate(probs)])
    np.testing.assert_allclose(online, filter_sequence(probs, PARAMS), rtol=1e-12)


def test_rows_update_only_their_devices() -> None:
    rng = np.random.default_rng(3)
    probs = random_probs(rng, (20, 3))
    together = SmoothingState(C, PARAMS, n_devices=3)
    alone = [SmoothingState(C, PARAMS) for _ in range(3)]
    for i, p in enumerate(probs):
        rows = np.array([0, 2]) if i % 2 else np.arange(3)  # device 1 skips odd windows
        together.update(p[rows], float(i), rows=rows)
        for r in rows:
            alone[r].update(p[r], float(i))
    for r in range(3):
        np.testing.assert_allclose(together.alpha[r], alone[r].alpha[0], rtol=1e-12)
        assert together.label[r] == alone[r].label[0]


def test_reset_forgets_only_the_given_rows() -> None:
    state = SmoothingState(C, PARAMS, n_devices=2)
    for i in range(20):
        state.update(np.vstack([confident(2), confident(4)]), float(i))
    state.reset(np.array([0]))
    np.testing.assert_allclose(state.alpha[0], 1.0 / C)
    assert state.label[0] == -1 and np.isnan(state.since[0])
    assert state.label[1] == 4 and state.alpha[1, 4] > 0.9
    state.update(confident(1), 100.0, rows=np.array([0]))
    assert state.label[0] == 1 and state.changed[0]  # the first window after a reset wins at once


def test_switches_within_a_few_windows_after_a_sustained_change() -> None:
    state = SmoothingState(C, PARAMS)
    for i in range(600):  # ten minutes of sitting
        state.update(confident(3), float(i))
    switched_after = None
    for n in range(1, 30):
        state.update(confident(4, p=0.7), float(600 + n))
        if state.label[0] == 4:
            switched_after = n
            break
    assert switched_after is not None and switched_after <= 4


def test_switch_time_does_not_grow_with_the_length_of_the_old_activity() -> None:
    short = SmoothingState(C, PARAMS)
    long = SmoothingState(C, PARAMS)
    for i in range(5000):
        long.update(confident(0), float(i))
        if i < 10:
            short.update(confident(0), float(i))
    np.testing.assert_allclose(short.alpha, long.alpha, rtol=1e-4)  # a fixed point, not a count
    counts = []
    for state in (short, long):
        n = 0
        while state.label[0] != 1:
            n += 1
            state.update(confident(1, p=0.7), 0.0)
        counts.append(n)
    assert (
        counts[0] == counts[1] == windows_to_switch(PARAMS, confident(0)[0], confident(1, 0.7)[0])
    )
    assert counts[0] <= 4


def test_worst_case_switch_is_bounded() -> None:
    # The old activity certain (a one-hot CNN, floored at eps), the new one only at 0.7
    # with all the rest of its mass on the old class: still a bounded, small delay.
    old = np.eye(C)[0]
    new = np.zeros(C)
    new[0], new[1] = 0.3, 0.7
    assert windows_to_switch(PARAMS, old, new) <= 10
    looser = SmootherParams(p_stay=0.9, beta=0.5)
    assert windows_to_switch(looser, old, new) < windows_to_switch(PARAMS, old, new)


def test_holds_through_a_single_window_blip() -> None:
    probs = np.vstack([confident(0, 0.8, 30), confident(5, 0.99), confident(0, 0.8, 30)])
    assert np.all(filter_sequence(probs, PARAMS).argmax(axis=1) == 0)
    assert probs.argmax(axis=1)[30] == 5


def test_since_is_the_start_of_the_raw_run_despite_flicker() -> None:
    params = SmootherParams(p_stay=0.995, beta=0.5, gap=2, lead_s=2.0)
    state = SmoothingState(C, params)
    raw = [0] * 30 + [1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]  # walking starts at window 30
    changes = []
    for i, label in enumerate(raw):
        state.update(confident(label, 0.6), float(i))
        if state.changed[0]:
            changes.append((i, int(state.label[0]), float(state.since[0])))
    assert changes[0] == (0, 0, -2.0)
    assert len(changes) == 2 and changes[1][1] == 1 and changes[1][0] > 31
    assert changes[1][2] == 30.0 - 2.0


def test_since_restarts_after_a_long_absence() -> None:
    state = SmoothingState(C, SmootherParams(p_stay=0.995, beta=0.5, gap=1, lead_s=0.0))
    raw = [0] * 10 + [1] + [0] * 10 + [1] * 12  # the blip at 10 is not the start of the run
    for i, label in enumerate(raw):
        state.update(confident(label, 0.6), float(i))
    assert state.label[0] == 1 and state.since[0] == 21.0


@pytest.mark.parametrize(
    "kwargs", [{"p_stay": 1.0}, {"p_stay": 0.0}, {"beta": 0.0}, {"beta": 1.5}, {"gap": -1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SmootherParams(**kwargs)


def test_the_one_device_smoother_gives_the_batched_filter_s_answers() -> None:
    rng = np.random.default_rng(4)
    probs = random_probs(rng, (300,)).astype(np.float32)  # what a model returns
    batched, one = SmoothingState(C, PARAMS), DeviceSmoother(C, PARAMS)
    changes = 0
    for i, p in enumerate(probs):
        segment = i // 100  # two restarts, as after gaps in the data
        if segment != one.segment:
            batched.reset()
        previous = int(batched.label[0])
        expected = batched.update(p, 10.0 + i)[0]
        got = one.update(p.tolist(), 10.0 + i, segment)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert (one.label, one.changed, one.previous) == (
            batched.label[0],
            batched.changed[0],
            previous,
        )
        if one.changed:
            changes += 1
            assert one.since == batched.since[0]
    assert changes >= 10


def test_a_restored_device_smoother_goes_on_as_the_saved_one() -> None:
    rng = np.random.default_rng(5)
    probs = random_probs(rng, (40,)).tolist()
    whole, first = DeviceSmoother(C, PARAMS), DeviceSmoother(C, PARAMS)
    for i, p in enumerate(probs[:25]):
        whole.update(p, float(i), 3)
        first.update(p, float(i), 3)
    second = DeviceSmoother(C, PARAMS)
    second.restore(first.snapshot())
    for i, p in enumerate(probs[25:], 25):
        assert second.update(p, float(i), 3) == whole.update(p, float(i), 3)
        assert (second.label, second.changed, second.since) == (
            whole.label,
            whole.changed,
            whole.since,
        )
    with pytest.raises(ValueError, match="5 classes"):
        DeviceSmoother(5, PARAMS).restore(first.snapshot())


def test_calibrated_windows_step_with_the_calibrated_settings_from_the_same_state() -> None:
    rng = np.random.default_rng(6)
    probs = random_probs(rng, (30,))
    calibrated = [10 <= i < 20 for i in range(30)]  # labelled, then the calibration reset
    one = DeviceSmoother(C, PARAMS)
    alpha = np.full((1, C), 1.0 / C)
    for p, cal in zip(probs, calibrated, strict=True):
        alpha = filter_step(alpha, p[None], CALIBRATED if cal else PARAMS)
        np.testing.assert_allclose(one.update(p.tolist(), 0.0, 0, cal), alpha[0], rtol=1e-12)
    assert one.calibrated_params == CALIBRATED != PARAMS
    assert CALIBRATED.p_stay > SmootherParams().p_stay and CALIBRATED.beta > SmootherParams().beta
