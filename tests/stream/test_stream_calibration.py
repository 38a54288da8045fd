"""A wearer's labels calibrate that device's classification: ``<prefix>/<id>/label`` in, the
retained ``<prefix>/<id>/calibration`` out, predictions mixed with the device's class
prototypes exactly as :mod:`harstream.models.har.calibration` computes them offline from the
same windows. A real broker, the random-weight test CNN."""

from __future__ import annotations

import numpy as np
import pytest
from bus_client import T0, Client, assert_smoothed, offline_smoothing

from harstream.models.har.calibration import PrototypeCalibration, fit_prototypes

WINDOW_S = 4.0  # 80 samples at 20 Hz; served with --hop 80: one window per message
SERVE = {"hop": 80, "device_rate_margin": 0.0}
OFFSETS = ((0.0, 10.0, 10.0), (0.0, 0.0, -10.0), (-10.0, -10.0, -10.0))


def bout(seed: int, offset: tuple[float, float, float], n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.asarray(offset) + rng.normal(0.0, 4.0, (n, 80, 3))).round(3).astype(np.float32)


def send(client: Client, device: str, block: np.ndarray, first: int) -> None:
    """Window ``k`` of ``block`` as window number ``first + k``: 80 samples from
    ``T0 + (first + k) * 4 s``."""
    for k, w in enumerate(block):
        client.publish(device, {"samples": w.tolist(), "t0": T0 + (first + k) * WINDOW_S})


def label(client: Client, device: str, doc: dict) -> None:
    client.publish(device, doc, suffix="label")


def calibrate(device: Client, name: str, sitting: np.ndarray, walking: np.ndarray) -> None:
    """Label the sent ``sitting`` windows after the fact (start/end), then ``walking`` ahead
    of its windows (seconds); wait for the calibration that counts them all."""
    send(device, name, sitting, 0)
    device.wait_for(name, len(sitting))  # labelled once they were classified
    end = T0 + len(sitting) * WINDOW_S
    label(device, name, {"activity": "sitting", "start": T0, "end": end})
    label(device, name, {"activity": "walking", "seconds": len(walking) * WINDOW_S + 1})
    send(device, name, walking, len(sitting))
    want = {"sitting": len(sitting), "walking": len(walking)}
    n = len(sitting) + len(walking)
    device.wait_for(name, n)
    for _ in range(100):
        got = device.json_of(name, "calibration")
        if got and got[-1]["classes"] == want:
            return
        device.settle(0.1)
    raise AssertionError(f"calibration {device.json_of(name, 'calibration')[-1:]} != {want}")


def offline(predictor, sitting, walking, test):
    """What the service must publish for ``test``: the CNN's probabilities mixed with the
    prototypes of the labelled windows, from the same embeddings."""
    probs, emb = predictor.predict_outputs(np.concatenate([sitting, walking, test]))
    classes = predictor.labels
    n = len(sitting) + len(walking)
    labels = [classes.index("sitting")] * len(sitting) + [classes.index("walking")] * len(walking)
    protos = fit_prototypes(emb[:n], np.array(labels), len(classes))
    return PrototypeCalibration().apply(protos, emb[n:], probs[n:]), probs[n:]


def probs_of(pred: dict) -> np.ndarray:
    return np.array(list(pred["probs"].values()))


@pytest.fixture
def windows():
    return bout(0, OFFSETS[0], 6), bout(1, OFFSETS[1], 4), bout(2, OFFSETS[2], 4)


def test_labels_calibrate_the_device_and_only_it(serve, device, broker, har_predictor, windows):
    serve(**SERVE)
    sitting, walking, test = windows
    calibrate(device, "wrist-a", sitting, walking)
    send(device, "wrist-a", test, 10)
    send(device, "wrist-b", np.concatenate(windows), 0)
    preds = sorted(device.wait_for("wrist-a", 14), key=lambda p: p["seq"])
    others = device.wait_for("wrist-b", 14)
    device.settle()
    assert not any(p["calibrated"] for p in preds[:6]), "no calibration before the labels"
    after = preds[10:]
    assert all(p["calibrated"] for p in after)
    want, cnn = offline(har_predictor, sitting, walking, test)
    np.testing.assert_allclose([probs_of(p) for p in after], want, atol=1e-4)
    assert not np.allclose(want, cnn, atol=1e-3), "calibration must change the answer"
    # smoothed with the default settings up to the calibration, the calibrated ones after
    assert_smoothed(device, "wrist-a")
    defaults_only = offline_smoothing(preds, calibrated=False)[10:]
    assert [d["confidence"] for d in defaults_only] != [p["confidence"] for p in after]
    # the other device: the CNN's own answer, no calibration
    assert not any(p["calibrated"] for p in others)
    assert not device.json_of("wrist-b", "calibration")
    np.testing.assert_allclose(
        [probs_of(p) for p in sorted(others, key=lambda p: p["seq"])[10:]], cnn, atol=1e-4
    )
    # the calibration is retained: a client that subscribes now gets it at once
    late = Client(broker.host, broker.port, device.prefix, broker.mqtt_version)
    try:
        (current,) = late.wait_for("wrist-a", 1, "calibration")
        assert current["classes"] == {"sitting": 6, "walking": 4}
        assert current["device"] == "wrist-a" and current["model"] == har_predictor.tag
        assert current["updated"] > T0
    finally:
        late.close()


BAD_LABELS = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"activity": "flying", "seconds": 20}', "unknown activity"),
    (b'{"activity": "sitting", "start": 1700000040, "end": 1700000020}', "after start"),
    (b'{"activity": "sitting", "start": 1700000020, "end": 1700000022}', "shorter than"),
    (b'{"activity": "sitting", "seconds": 2}', "shorter than"),
    (b'{"activity": "sitting", "seconds": 3600}', "longer than"),
    (b'{"activity": "sitting", "start": 1699990000, "end": 1699990020}', "before the device"),
    (b'{"activity": "sitting", "start": 1700090000, "end": 1700090020}', "after the device"),
    (b'{"activity": "sitting", "seconds": 20, "start": 1700000000}', "or seconds"),
    (b'{"activity": "sitting", "start": "soon", "end": 1700000020}', "finite number"),
    (b'{"reset": true, "activity": "sitting"}', "alone"),
]


def test_bad_labels_are_reported_and_change_nothing(serve, device, windows):
    service = serve(**SERVE)
    sitting, walking, test = windows
    send(device, "wrist-c", sitting, 0)
    device.wait_for("wrist-c", len(sitting))
    for payload, _ in BAD_LABELS:
        device.publish("wrist-c", payload, suffix="label")
    errors = device.wait_for("wrist-c", len(BAD_LABELS), "errors")
    for error, (_, rule) in zip(errors, BAD_LABELS, strict=True):
        assert error["error"] == "bad_label" and rule in error["message"], error
        assert error["topic"].endswith("/wrist-c/label")
    label(device, "wrist-new", {"activity": "sitting", "seconds": 20})
    (error,) = device.wait_for("wrist-new", 1, "errors")
    assert error["error"] == "bad_label" and "no readings" in error["message"]
    send(device, "wrist-c", walking, len(sitting))
    preds = device.wait_for("wrist-c", len(sitting) + len(walking))
    device.settle()
    assert not any(p["calibrated"] for p in preds)
    assert not device.json_of("wrist-c", "calibration")
    counted = service.metrics.value("harstream_errors_total", family="har", kind="bad_label")
    assert counted == len(BAD_LABELS) + 1


def test_reset_clears_the_calibration(serve, device, windows):
    serve(**SERVE)
    sitting, walking, test = windows
    calibrate(device, "wrist-d", sitting, walking)
    label(device, "wrist-d", {"reset": True})
    send(device, "wrist-d", test, 10)
    preds = sorted(device.wait_for("wrist-d", 14), key=lambda p: p["seq"])
    device.settle()
    assert device.json_of("wrist-d", "calibration")[-1]["classes"] == {}
    assert not any(p["calibrated"] for p in preds[10:])
    assert any(p["calibrated"] for p in preds[:10])
    assert_smoothed(device, "wrist-d")  # back to the default settings after the reset


def test_a_restart_keeps_the_calibration(serve, device, har_predictor, windows, tmp_path):
    store = tmp_path / "calibrations.sqlite"
    first = serve(**SERVE, calibration_store=store)
    sitting, walking, test = windows
    calibrate(device, "wrist-e", sitting, walking)
    assert first.stop()
    serve(**SERVE, calibration_store=store)
    send(device, "wrist-e", test, 100)  # the readings of much later: a new segment
    preds = sorted(device.wait_for("wrist-e", 14), key=lambda p: p["seq"])
    after = [p for p in preds if p["window"]["start"] >= T0 + 100 * WINDOW_S]
    assert len(after) == 4 and all(p["calibrated"] for p in after)
    want, _ = offline(har_predictor, sitting, walking, test)
    np.testing.assert_allclose([probs_of(p) for p in after], want, atol=1e-4)


def test_a_blend_is_served_and_calibrated_like_the_cnn(serve, device, har_blend_predictor, windows):
    """The blended model (CNN + boosted trees in one compiled call): its probabilities are
    published, and labels calibrate it from the CNN part's embedding, mixed into the
    blend's probabilities exactly as offline."""
    serve(predictor=har_blend_predictor, **SERVE)
    sitting, walking, test = windows
    calibrate(device, "wrist-blend", sitting, walking)
    send(device, "wrist-blend", test, 10)
    preds = sorted(device.wait_for("wrist-blend", 14), key=lambda p: p["seq"])
    device.settle()
    assert {p["model"] for p in preds} == {"har-blend@test"}
    plain = har_blend_predictor.predict(np.concatenate(windows))
    np.testing.assert_allclose([probs_of(p) for p in preds[:6]], plain[:6], atol=1e-4)
    want, blended = offline(har_blend_predictor, sitting, walking, test)
    assert all(p["calibrated"] for p in preds[10:])
    np.testing.assert_allclose([probs_of(p) for p in preds[10:]], want, atol=1e-4)
    assert not np.allclose(want, blended, atol=1e-3), "calibration must change the answer"
