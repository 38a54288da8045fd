"""The service smooths each device's activity: what it publishes is the offline filter's
answer for that device's own windows, restarted after a gap, and every change is told on
the retained ``<prefix>/<id>/state``. A real broker, the random-weight test CNN."""

from __future__ import annotations

import numpy as np
from bus_client import T0, Client, assert_smoothed

WINDOW_S = 4.0  # 80 samples at 20 Hz; the tests serve with --hop 80: one window per message
# hop 80, windows sent as fast as the broker takes them, without the per-device rate limit
SERVE = {"hop": 80, "device_rate_margin": 0.0}
# Constant offsets the test CNN scores as three different classes; the noise makes its raw
# answer flicker between them within a bout, which the filter irons out.
BOUTS = ((0.0, 10.0, 10.0), (0.0, 0.0, -10.0), (-10.0, -10.0, -10.0), (0.0, 10.0, 10.0))


def windows(seed: int, per_bout: int = 8) -> np.ndarray:
    """Four bouts of noisy windows, ``(4 * per_bout, 80, 3)``."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [np.asarray(o) + rng.normal(0.0, 4.0, (per_bout, 80, 3)) for o in BOUTS]
    ).round(3)


def send(client: Client, device: str, block: np.ndarray, t0: float) -> None:
    """One message per window, timestamped back to back from ``t0``."""
    for k, w in enumerate(block):
        client.publish(device, {"samples": w.tolist(), "t0": t0 + k * WINDOW_S})


def flips(values: list[str]) -> int:
    return sum(a != b for a, b in zip(values, values[1:], strict=False))


def test_devices_get_their_own_smoothed_activity_and_change_events(serve, device, broker):
    serve(**SERVE)
    streams = {"wrist-a": windows(0), "wrist-b": windows(1)}
    for k in range(len(streams["wrist-a"])):  # interleaved: one filter per device
        for name, block in streams.items():
            send(device, name, block[k : k + 1], T0 + k * WINDOW_S)
    for name, block in streams.items():
        device.wait_for(name, len(block))
    device.settle()
    for name in streams:
        preds = sorted(device.json_of(name), key=lambda p: p["seq"])
        states = assert_smoothed(device, name)
        raw = [p["raw"]["activity"] for p in preds]
        smoothed = [p["activity"] for p in preds]
        # the scripted flicker is there, and the filter removed some of it
        assert flips(smoothed) < flips(raw), (raw, smoothed)
        assert len(states) >= 2 and states[0]["previous"] is None
        assert [s["previous"] for s in states[1:]] == [s["activity"] for s in states[:-1]]
    # a client that subscribes now gets each device's current state at once (retained)
    late = Client(broker.host, broker.port, device.prefix, broker.mqtt_version)
    try:
        for name in streams:
            (current,) = late.wait_for(name, 1, "state")
            assert current == device.json_of(name, "state")[-1]
        late.settle()
        assert not late.json_of("wrist-a"), "predictions must not be retained"
    finally:
        late.close()


def test_a_gap_restarts_the_filter(serve, device):
    serve(**SERVE)
    block = windows(2, per_bout=4)
    send(device, "gappy", block[:8], T0)
    send(device, "gappy", block[8:], T0 + 600.0)  # ten minutes later
    device.wait_for("gappy", len(block))
    device.settle()
    states = assert_smoothed(device, "gappy", restarts=(8,))
    first_after = [s for s in states if s["since"] >= T0 + 600.0 - WINDOW_S]
    assert first_after[0]["previous"] is None, "after a gap the past is unknown"


def test_smoothing_off_publishes_each_window_s_own_answer(serve, device):
    serve(**SERVE, smoothing="off")
    block = windows(0, per_bout=3)
    send(device, "plain", block, T0)
    preds = device.wait_for("plain", len(block))
    device.settle()
    for pred in preds:
        assert "raw" not in pred
        assert pred["confidence"] == pred["probs"][pred["activity"]] == max(pred["probs"].values())
    assert flips([p["activity"] for p in preds]) >= 2
    assert not device.json_of("plain", "state")
