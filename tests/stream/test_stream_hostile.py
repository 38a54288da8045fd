"""Hostile input: every message costs work bounded by its size, gets a documented error,
and never stalls the service or disturbs other devices; stop is bounded whatever a handler
does."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import orjson
import pytest
from bus_client import T0, http_get, service_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harstream.stream import contract
from harstream.stream.families.har import (
    MAX_ABS_ACCEL,
    MAX_SAMPLES,
    MAX_TIME_S,
    MIN_RATE_HZ,
    WindowBuffer,
    decode_accel,
    encode_binary,
)
from harstream.stream.routes import PayloadError, Route
from harstream.stream.service import Service

# Every kind the contract documents for the HAR route (docs: the errors table).
DOCUMENTED_KINDS = {
    "malformed_json",
    "wrong_type",
    "missing_axes",
    "non_finite",
    "out_of_range",
    "oversize",
    "empty",
    "binary_garbage",
    "invalid_id",
    "internal",
}


def deep(n: int) -> bytes:
    return b"[" * n + b"1" + b"]" * n


# The payloads a fault and fuzz trial sent against the live service, and what each must get.
REGRESSIONS = [
    (b'{"samples":[[0,0,9.8],[0,0,9.8]],"rate_hz":1e-300}', "out_of_range"),
    (encode_binary([[0, 0, 9.8]] * 2, rate_hz=1e-30, t0=T0), "out_of_range"),
    (encode_binary(np.zeros((4096, 3)), rate_hz=0.1, t0=T0), "out_of_range"),
    (b'{"samples":[[0,0,0],[0,0,0]],"rate_hz":2e-311,"t0":0}', "out_of_range"),
    (b'{"x": 1e39, "y": 0, "z": 0}', "non_finite"),
    (b'{"samples": [[1e39, 0, 0]]}', "non_finite"),
    (encode_binary([[3e38, 0, 0]]), "out_of_range"),
    (b'{"x": 20000, "y": 0, "z": 0}', "out_of_range"),
    (b'{"x": ' + deep(1000) + b', "y": 0, "z": 0}', "wrong_type"),
    (b'{"samples": ' + deep(1000) + b"}", "wrong_type"),
    (b'{"samples": [[0, 0, ' + deep(900) + b"]]}", "wrong_type"),
    (deep(2000), "wrong_type"),
    (b'{"x": 1, "y": 2, "z": 3, "t": 1.7e19}', "out_of_range"),  # past ns too
    (b'{"x": 1, "y": 2, "z": 3, "t": -1}', "out_of_range"),
    (b"[[1700000000, 1, 2, 3], [1e300, 1, 2, 3]]", "out_of_range"),
    (b'{"samples": [[1, 2, 3]], "t0": 1e300}', "out_of_range"),
    (b"[[1, 2, 3], [1, true, 3]]", "wrong_type"),
    (b"[false, 0]", "wrong_type"),
    (b'{"x": 1' + b"0" * 400 + b', "y": 0, "z": 0}', "non_finite"),
]


@pytest.mark.parametrize(("payload", "kind"), REGRESSIONS)
def test_hostile_payloads_get_a_documented_error(payload, kind):
    with pytest.raises(PayloadError) as err:
        decode_accel(payload)
    assert err.value.kind == kind, err.value.message
    assert len(err.value.message) < 300  # nothing of a large payload is echoed back


def test_sparse_readings_are_refused_before_they_multiply_into_windows():
    sink = Collect()
    buf = WindowBuffer(sink)
    rows = [[T0 + 0.99 * i, 0.0, 0.0, 9.8] for i in range(2000)]
    with pytest.raises(PayloadError) as err:
        buf.push(decode_accel(orjson.dumps(rows)), T0, 0.0)
    assert err.value.kind == "out_of_range" and sink.windows == 0
    # the same device's ordinary readings still work afterwards
    buf.push(decode_accel(orjson.dumps({"samples": [[0, 0, 9.8]] * 80, "t0": T0})), T0, 0.0)
    assert sink.windows == 1


class Collect:
    """A sink that counts what a buffer emits."""

    def __init__(self) -> None:
        self.windows = 0
        self.drops = 0

    def emit(self, x, info, received, link=None) -> None:
        assert x.shape == (80, 3) and np.isfinite(x).all()
        self.windows += 1

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None:
        self.drops += n


def window_bound(n: int, max_gap: float = 1.0, hop: int = 20) -> int:
    """The most windows a message of ``n`` readings may yield: each reading spans at most
    20 / 5 = 4 grid points, plus the gap from the previous message (max_gap / 50 ms)."""
    points = n * 20 / MIN_RATE_HZ + max_gap * 20 + 2
    return int(points // hop) + 1


finite = st.floats(allow_nan=False, allow_infinity=False)
any_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-300, 2e-311, 1e300, 1e39, 3.5e38, MAX_TIME_S * 1.001, 1e12]
)
json_leaf = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=5)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


def row(width: int) -> st.SearchStrategy:
    return st.lists(any_float | st.integers(-(2**70), 2**70), min_size=width, max_size=width)


accel_doc = st.one_of(
    st.fixed_dictionaries({"x": any_float, "y": finite, "z": finite}, optional={"t": any_float}),
    st.fixed_dictionaries(
        {"samples": st.lists(row(3), min_size=1, max_size=40)},
        optional={"rate_hz": any_float, "t0": any_float},
    ),
    st.lists(row(4), min_size=1, max_size=40),
    json_value,
)


def push_is_bounded(payload: bytes, messages: int = 3) -> None:
    """Decode ``payload``; if accepted, push it ``messages`` times into one buffer and check
    that each push ends with at most :func:`window_bound` windows."""
    try:
        value = decode_accel(payload)
    except PayloadError as exc:
        assert exc.kind in DOCUMENTED_KINDS
        return
    assert len(value.xyz) <= MAX_SAMPLES
    assert np.abs(value.xyz).max() <= MAX_ABS_ACCEL
    if value.times is not None:
        assert (value.times >= 0).all() and (value.times <= MAX_TIME_S + 1000).all()
    sink = Collect()
    buf = WindowBuffer(sink)
    for i in range(messages):
        before = sink.windows
        try:
            buf.push(value, T0 + i, float(i))
        except PayloadError as exc:
            assert exc.kind == "out_of_range"
            continue
        assert sink.windows - before <= window_bound(len(value.xyz))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accel_doc)
def test_any_json_terminates_with_bounded_output(doc):
    try:
        payload = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):  # NaN/inf are not JSON; the text forms are
        payload = repr(doc).encode()
    push_is_bounded(payload)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=300),
    any_float,
    any_float,
)
def test_any_binary_message_terminates_with_bounded_output(rows, rate, t0):
    header_rate = rate if math.isnan(rate) or abs(rate) < 3.4e38 else 3.4e38
    push_is_bounded(
        encode_binary(np.array(rows, dtype=np.float64).clip(-3e38, 3e38), header_rate, t0)
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_terminate(payload):
    push_is_bounded(payload)
    push_is_bounded(b"HSA1" + payload)


# ---------------------------------------------------------------- live service


def test_hostile_messages_never_disturb_other_devices(serve, device, prefix):
    service = serve()
    stop = threading.Event()

    def stream() -> None:  # a normal device at 20 Hz, 10 samples per message
        i = 0
        while not stop.is_set() and i < 2000:
            rows = [[T0 + (i + k) / 20, 0.0, 1.0, 9.8] for k in range(10)]
            device.publish("steady", orjson.dumps(rows))
            i += 10
            time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        device.wait_for("steady", 1)
        for n, (payload, kind) in enumerate(REGRESSIONS):
            device.publish(f"evil-{n}", payload)
            (err,) = device.wait_for(f"evil-{n}", 1, "errors")
            assert err["error"] == kind, (n, err)
        before = len(device.json_of("steady"))
        time.sleep(1.5)  # the steady device still gets a prediction every second
        assert len(device.json_of("steady")) > before
    finally:
        stop.set()
        streamer.join()
    assert service.metrics.value("harstream_errors_total", family="har", kind="internal") == 0


@pytest.mark.parametrize(
    ("topic_id", "reply"),
    [
        ("", "_invalid"),
        ("x" * 300, "_invalid"),
        (".", "_invalid"),
        ("..", "_invalid"),
        ("service", "_invalid"),
        ("-", "-"),
        ("_x", "_x"),
        ("bad id", "bad id"),
    ],
)
def test_unusable_ids_are_reported_and_counted(serve, device, prefix, topic_id, reply):
    service = serve()
    device.client.publish(f"{prefix}/{topic_id}/accel", b'{"x": 1, "y": 2, "z": 3}', qos=1)
    (err,) = device.wait_for(reply, 1, "errors")
    assert err["error"] == "invalid_id" and contract.ID_RULE in err["message"]
    assert err["device"] == (topic_id if reply == topic_id else None)
    assert service.metrics.value("harstream_errors_total", family="har", kind="invalid_id") == 1
    device.settle()
    assert not device.json_of(topic_id)  # no prediction on a confusing topic


def failing_route(route: Route, trigger: bytes, action) -> Route:
    """``route`` with a decoder that runs ``action`` on ``trigger``: a bug or a hang."""

    def decode(payload: bytes, content_type: str | None = None):
        if payload == trigger:
            action()
        return route.decode(payload, content_type)

    return Route(
        route.family,
        route.suffix,
        route.out_suffix,
        decode,
        route.new_buffer,
        route.predictor,
        route.encode,
    )


def har_route(har_predictor, prefix: str) -> Route:
    from harstream.stream.config import ServeConfig
    from harstream.stream.families.har import build

    return build(ServeConfig(prefix=prefix), har_predictor)


def start_service(broker, prefix: str, routes: list[Route], **overrides) -> Service:
    from harstream.stream.config import ServeConfig

    cfg = service_broker(broker.host, broker.port, broker.mqtt_version, prefix)
    config = ServeConfig(broker=cfg, prefix=prefix, max_batch=16, **overrides)
    return Service(config, routes=routes).start()


def test_an_internal_error_reaches_the_device_and_logs_one_traceback_a_minute(
    broker, har_predictor, prefix, device, caplog
):
    def bug() -> None:
        raise RuntimeError("a bug")

    route = failing_route(har_route(har_predictor, prefix), b"bug", bug)
    service = start_service(broker, prefix, [route])
    try:
        with caplog.at_level(logging.ERROR, logger="harstream.stream.service"):
            for _ in range(20):
                device.publish("buggy", b"bug")
            errors = device.wait_for("buggy", 20, "errors")
        assert {e["error"] for e in errors} == {"internal"}
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1
        assert service.metrics.value("harstream_errors_total", family="har", kind="internal") == 20
        device.samples("buggy", 0, 80)  # and the device keeps working
        device.wait_for("buggy", 1)
    finally:
        service.stop()


def test_a_stuck_handler_is_reported_and_stop_still_ends(broker, har_predictor, prefix, device):
    release = threading.Event()
    route = failing_route(har_route(har_predictor, prefix), b"hang", lambda: release.wait(60))
    service = start_service(
        broker, prefix, [route], slow_handler_ms=100, stop_timeout=2, health_port=0
    )
    try:
        assert http_get(service.health_port, "/healthz") == (200, {"alive": True})
        device.publish("stuck", b"hang")
        deadline = time.monotonic() + 10
        while service.metrics.value("harstream_slow_handlers_total") < 1:
            assert time.monotonic() < deadline, "the stuck handler was not reported"
            time.sleep(0.05)
        status, body = http_get(service.health_port, "/healthz")
        assert status == 503 and body["reason"] == "message handler stuck", body
        assert body["topic"] == f"{prefix}/stuck/accel" and body["running_s"] >= 0.1
        began = time.monotonic()
        clean = service.stop()
        assert not clean and time.monotonic() - began < 6.0
    finally:
        release.set()
