"""The service end to end through a real MQTT broker on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bus_client import (
    T0,
    WAIT,
    Client,
    assert_smoothed,
    http_get,
    make_certificates,
    service_broker,
)

from harstream.bench.mqtt_wire import WireClient
from harstream.stream.broker import (
    EmbeddedBroker,
    MosquittoBroker,
    free_port,
    is_listening,
    mosquitto_binary,
)
from harstream.stream.config import ServeConfig
from harstream.stream.connection import BrokerConfig
from harstream.stream.families.har import encode_binary
from harstream.stream.service import Service

ROOT = Path(__file__).resolve().parents[2]


def test_80_samples_give_exactly_one_prediction_with_the_contract_fields(serve, device):
    serve(families=["har"])
    device.samples("watch-1", 0, 80)
    (pred,) = device.wait_for("watch-1", 1)
    device.settle()
    assert len(device.json_of("watch-1")) == 1
    assert pred["device"] == "watch-1"
    assert pred["activity"] in pred["probs"] and len(pred["probs"]) == 6
    best = max(pred["probs"], key=pred["probs"].get)
    assert pred["raw"] == {"activity": best, "confidence": pred["probs"][best]}
    # the first window from the filter's uniform start: same answer, tempered confidence
    assert pred["activity"] == best and 1 / 6 < pred["confidence"] <= pred["probs"][best]
    # 4 decimals each (no float32 noise), so 6 of them sum to 1 within 6 x 0.00005
    assert all(round(p, 4) == p for p in (*pred["probs"].values(), pred["confidence"]))
    assert sum(pred["probs"].values()) == pytest.approx(1.0, abs=3e-4)
    assert pred["window"] == {"start": T0, "end": T0 + 79 / 20, "samples": 80}
    assert pred["model"] == "har-cnn@test"
    assert pred["seq"] == 1
    assert 0 <= pred["latency_ms"] < 60_000


def test_hop_sets_the_prediction_rate(serve, device):
    serve(hop=20)
    device.publish("p", {"samples": [[1.0, 2.0, 3.0]] * 160, "t0": T0})
    preds = device.wait_for("p", 5)
    device.settle()
    preds = device.json_of("p")
    assert [p["seq"] for p in preds] == [1, 2, 3, 4, 5]
    assert [p["window"]["start"] for p in preds] == [T0 + k for k in range(5)]


def test_many_devices_are_batched_and_metrics_are_served(serve, device):
    service = serve(max_wait_ms=50.0, metrics_port=0)
    devices = [f"dev-{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    for d in devices:
        device.publish(d, {"samples": rng.normal(size=(80, 3)).round(3).tolist()})
    for d in devices:
        device.wait_for(d, 1)
    m = service.metrics
    count = m.value("harstream_inference_batch_size_count", family="har")
    singles = m.value("harstream_inference_batch_size_bucket", family="har", le="1.0")
    assert m.value("harstream_inference_batch_size_sum", family="har") == 60
    assert singles < count, "every window was classified alone: nothing was batched"
    body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics").read()
    for name in (
        "harstream_messages_total",
        "harstream_samples_total",
        "harstream_windows_classified_total",
        "harstream_predictions_total",
        "harstream_latency_seconds_bucket",
        "harstream_inference_seconds_bucket",
        "harstream_devices_active",
    ):
        assert name.encode() in body, name
    assert http_get(service.metrics_port, "/healthz") == (200, {"alive": True})
    assert http_get(service.metrics_port, "/readyz") == (200, {"ready": True})
    assert http_get(service.metrics_port, "/nothing")[0] == 404


def test_health_port_alone_serves_the_probes_but_not_metrics(serve):
    service = serve(health_port=0)
    assert service.metrics_port is None
    assert http_get(service.health_port, "/healthz") == (200, {"alive": True})
    assert http_get(service.health_port, "/readyz") == (200, {"ready": True})
    assert http_get(service.health_port, "/metrics")[0] == 404
    service.stop()
    with pytest.raises(urllib.error.URLError):
        http_get(service.health_port, "/healthz")


def test_50hz_stream_is_resampled_to_20hz(serve, device):
    serve()
    n = 200  # 3.98 s at 50 Hz -> 80 samples at 20 Hz (0 .. 3.95 s)
    ramp = [[i / 50, 0.0, 9.8] for i in range(n)]
    device.publish("phone", {"samples": ramp, "rate_hz": 50, "t0": T0})
    device.publish("phone-bin", encode_binary(ramp, rate_hz=50, t0=T0))
    for d in ("phone", "phone-bin"):
        (pred,) = device.wait_for(d, 1)
        assert pred["window"] == {"start": T0, "end": T0 + 3.95, "samples": 80}
    device.settle()
    assert len(device.json_of("phone")) == 1


def test_a_time_gap_restarts_the_window(serve, device):
    service = serve()
    device.samples("gappy", 0, 60)
    device.samples("gappy", 200, 80)  # 7 s later
    (pred,) = device.wait_for("gappy", 1)
    device.settle()
    assert len(device.json_of("gappy")) == 1
    assert pred["window"]["start"] == T0 + 10.0
    assert service.metrics.value("harstream_drops_total", family="har", reason="gap") == 60
    (err,) = device.json_of("gappy", "errors")
    assert err["error"] == "gap" and err["message"].startswith("60 dropped as gap")
    assert "7.05 s apart, more than --max-gap 1 s" in err["message"]


BAD_INPUTS = [
    ("malformed", b'{"x": 1, "y":', "malformed_json"),
    ("types", b'{"x": "1", "y": 2, "z": 3}', "wrong_type"),
    ("axes", b'{"x": 1, "y": 2}', "missing_axes"),
    ("rows", b"[[1, 2], [3, 4]]", "missing_axes"),
    ("nan-json", b'{"x": NaN, "y": 2, "z": 3}', "non_finite"),
    ("nan-bin", encode_binary([[np.nan, 0, 0]]), "non_finite"),
    ("big", b"[" + b"[1,2,3]," * 700 + b"[1,2,3]]", "oversize"),
    ("garbage", bytes(range(256)) * 2, "binary_garbage"),
    ("truncated", encode_binary([[1, 2, 3]] * 4)[:-5], "binary_garbage"),
    ("empty", b"", "empty"),
]


def test_every_bad_input_is_reported_and_the_device_keeps_working(serve, device, prefix):
    service = serve(max_payload=4096)
    device.samples("bystander", 0, 40)
    for name, payload, kind in BAD_INPUTS:
        device.publish(name, payload)
        (err,) = device.wait_for(name, 1, "errors")
        assert err["error"] == kind, (name, err)
        assert err["device"] == name and err["message"]
        device.samples(name, 0, 80)
        (pred,) = device.wait_for(name, 1)
        assert pred["window"]["samples"] == 80
    for bad_id in ("bad id!", "x" * 65):
        device.publish(bad_id, {"x": 1, "y": 2, "z": 3})
        (err,) = device.wait_for(bad_id, 1, "errors")
        assert err["error"] == "invalid_id"
    device.samples("bystander", 40, 40)
    (pred,) = device.wait_for("bystander", 1)
    assert pred["window"]["start"] == T0
    m = service.metrics
    for _, _, kind in BAD_INPUTS:
        assert m.value("harstream_errors_total", family="har", kind=kind) >= 1, kind
    assert m.value("harstream_errors_total", family="har", kind="invalid_id") == 2


def test_out_of_order_and_duplicate_samples_are_dropped_counted_and_told(serve, device):
    service = serve()
    device.samples("jitter", 0, 50)
    device.samples("jitter", 49, 1)  # duplicate
    device.samples("jitter", 10, 1)  # out of order
    device.samples("jitter", 49, 1)  # duplicate again: within 10 s of the first notice
    device.samples("jitter", 50, 30)
    (pred,) = device.wait_for("jitter", 1)
    assert pred["window"] == {"start": T0, "end": T0 + 79 / 20, "samples": 80}
    device.settle()
    errors = device.json_of("jitter", "errors")
    assert [e["error"] for e in errors] == ["duplicate", "out_of_order"], "one per kind per 10 s"
    assert errors[0]["message"].startswith("1 dropped as duplicate since the last such notice")
    assert "time order" in errors[1]["message"]
    assert errors[0]["topic"] == f"{device.prefix}/jitter/accel"
    m = service.metrics
    assert m.value("harstream_drops_total", family="har", reason="duplicate") == 2
    assert m.value("harstream_drops_total", family="har", reason="out_of_order") == 1
    assert m.value("harstream_errors_total", family="har", kind="duplicate") == 1
    assert m.value("harstream_errors_total", family="har", kind="out_of_order") == 1


def test_millisecond_timestamps_get_predictions(serve, device):
    serve()
    ms = 1_764_600_000_000  # what JavaScript's Date.now() gives
    for i in range(80):
        device.publish("js", {"x": float(i % 7), "y": 1.0, "z": 9.8, "t": ms + 50 * i})
    (pred,) = device.wait_for("js", 1)
    assert pred["window"] == {"start": ms / 1e3, "end": ms / 1e3 + 3.95, "samples": 80}
    assert not device.json_of("js", "errors")


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary")
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_service_reconnects_when_the_broker_restarts(har_predictor, prefix, version):
    own = MosquittoBroker(free_port())
    own.start()
    cfg = service_broker(own.host, own.port, version, prefix)
    service = Service(
        ServeConfig(broker=cfg, prefix=prefix, families=["har"], max_batch=16, health_port=0),
        predictors={"har": har_predictor},
    ).start()
    dev = Client(own.host, own.port, prefix, version)
    try:
        assert http_get(service.health_port, "/readyz") == (200, {"ready": True})
        dev.samples("d", 0, 80)
        dev.wait_for("d", 1)
        dev._subscribed.clear()
        own.stop(kill=True)
        deadline = time.monotonic() + WAIT
        while (ready := http_get(service.health_port, "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, "still ready with the broker gone"
            time.sleep(0.05)
        assert ready == (503, {"ready": False, "reason": "not connected"})
        assert http_get(service.health_port, "/healthz") == (200, {"alive": True})
        own.start()
        deadline = time.monotonic() + WAIT
        while service.metrics.value("harstream_broker_connects_total") < 2:
            assert time.monotonic() < deadline, "service did not reconnect"
            time.sleep(0.05)
        # the broker lost every session: publish only once both are subscribed again
        assert service.wait_subscribed(WAIT) and dev._subscribed.wait(WAIT)
        assert http_get(service.health_port, "/readyz") == (200, {"ready": True})
        dev.samples("d", 80, 20)
        # QoS 1 is at least once: the first prediction may come again if its PUBACK died
        # with the broker, so look for the new one by its seq
        deadline = time.monotonic() + WAIT
        while not [p for p in dev.json_of("d") if p["seq"] > 1]:
            assert time.monotonic() < deadline, f"no second window: {dev.json_of('d')}"
            time.sleep(0.05)
        (pred,) = [p for p in dev.json_of("d") if p["seq"] > 1]
        assert pred["seq"] == 2, "the device buffer was not kept across the reconnect"
        assert pred["window"]["end"] == T0 + 99 / 20
    finally:
        dev.close()
        service.stop()
        own.close()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_service_restart_loses_nothing_published_meanwhile(broker, serve, device, version):
    if broker.kind == "amqtt":
        pytest.skip("amqtt keeps no messages for an anonymous client while it is away")
    total = 400
    first = serve(hop=1, mqtt_version=version)
    publisher_done = threading.Event()

    def publish_slowly() -> None:
        for i in range(total):
            device.samples("steady", i, 1)
            time.sleep(0.004)
        publisher_done.set()

    thread = threading.Thread(target=publish_slowly)
    thread.start()
    deadline = time.monotonic() + WAIT
    while first.metrics.value("harstream_samples_total", family="har") < 100:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.stop()
    seen_first = first.metrics.value("harstream_samples_total", family="har")
    time.sleep(0.3)
    second = serve(hop=1, mqtt_version=version)  # same client id: resumes the session
    thread.join(WAIT)
    assert publisher_done.is_set()
    deadline = time.monotonic() + WAIT
    while (
        seen_first + second.metrics.value("harstream_samples_total", family="har") < total
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    seen_second = second.metrics.value("harstream_samples_total", family="har")
    assert seen_first + seen_second == total
    preds = device.wait_for("steady", int(seen_first - 79 + seen_second - 79))
    assert preds[-1]["window"]["end"] == T0 + (total - 1) / 20


def test_embedded_broker_starts_when_nothing_listens(har_predictor, prefix):
    port = free_port()
    cfg = BrokerConfig(port=port, client_id=f"serve-{prefix}")  # no --broker given
    service = Service(
        ServeConfig(broker=cfg, prefix=prefix, families=["har"], max_batch=16),
        predictors={"har": har_predictor},
    ).start()
    try:
        assert isinstance(service.embedded_broker, EmbeddedBroker)
        dev = Client("127.0.0.1", port, prefix, "3.1.1")
        dev.samples("e", 0, 80)
        (pred,) = dev.wait_for("e", 1)
        assert pred["seq"] == 1
        dev.close()
    finally:
        service.stop()
    assert not is_listening("127.0.0.1", port)


def _serve_process(
    broker, model_path: Path, prefix: str, state_home: Path, *extra: str
) -> subprocess.Popen:
    """``harstream serve`` as a subprocess on ``broker`` (client id ``serve-<prefix>``), its
    default state file under ``state_home`` (never the real home directory)."""
    env = {
        **os.environ,
        "HARSTREAM_MAX_BATCH": "1",
        "PYTHONUNBUFFERED": "1",
        "XDG_STATE_HOME": str(state_home),
    }
    cmd = [
        sys.executable,
        "-m",
        "harstream",
        "serve",
        "--broker",
        broker.url,
        "--mqtt-version",
        broker.mqtt_version,
        "--model",
        str(model_path),
        "--prefix",
        prefix,
        "--client-id",
        f"serve-{prefix}",
        "--families",
        "har",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def test_sigterm_publishes_offline_and_exits_zero(broker, har_model_path, prefix, tmp_path):
    watcher = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    proc = _serve_process(broker, har_model_path, prefix, tmp_path)
    try:
        online = watcher.wait_for("service", 1, "status")[0]
        assert online["status"] == "online"
        assert online["models"] == {"har": "har-cnn@test"}
        watcher.samples("s", 0, 80)
        watcher.wait_for("s", 1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    statuses = watcher.wait_for("service", 2, "status")
    assert statuses[-1]["status"] == "offline"
    watcher.close()
    assert (tmp_path / "harstream" / f"serve-{prefix}.state").is_file()  # the default path


class Streamer:
    """Devices that each publish one reading (timestamps at 20 Hz) every ``interval`` seconds
    until :meth:`stop`, which returns how many readings each one sent."""

    def __init__(self, client: Client, devices: list[str], interval: float) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(client, devices, interval), daemon=True
        )
        self._thread.start()

    def _run(self, client: Client, devices: list[str], interval: float) -> None:
        while not self._stop.is_set():
            for d in devices:
                client.samples(d, self.sent, 1)
            self.sent += 1
            time.sleep(interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(WAIT)
        return self.sent


def assert_every_window_once(client: Client, devices: list[str], sent: int) -> int:
    """Every window of ``sent`` readings per device (hop 20) predicted exactly once."""
    expected = (sent - 80) // 20 + 1
    for d in devices:
        client.wait_for(d, expected)
    client.settle()
    for d in devices:
        preds = client.json_of(d)
        assert sorted(p["seq"] for p in preds) == list(range(1, expected + 1)), d
        starts = sorted(p["window"]["start"] for p in preds)
        assert starts == [T0 + k for k in range(expected)], f"{d}: a window is missing"
    return expected


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_planned_restart_predicts_every_window_exactly_once(broker, serve, device, tmp_path):
    if broker.kind == "amqtt":
        pytest.skip("amqtt keeps no messages for an anonymous client while it is away")
    path = tmp_path / "serve.state"
    devices = [f"cont-{i}" for i in range(5)]
    first = serve(state_file=path)
    streamer = Streamer(device, devices, 0.005)
    try:
        _wait_until(
            lambda: first.metrics.value("harstream_predictions_total", family="har") >= 10,
            "the first predictions",
        )
        first.stop()  # mid-window for every device: each has a partial window to carry over
        assert path.is_file()
        time.sleep(0.3)  # devices keep publishing while no service runs
        second = serve(state_file=path)
        assert not path.exists(), "the state file must be consumed at start"
        assert len(second._served["accel"].table) == len(devices)
        _wait_until(
            lambda: second.metrics.value("harstream_samples_total", family="har") >= 500,
            "readings after the restart",
        )
    finally:
        sent = streamer.stop()
    assert_every_window_once(device, devices, sent)
    for d in devices:  # the filter went on where it was: no restart, no extra change event
        assert_smoothed(device, d)
    received = sum(
        s.metrics.value("harstream_samples_total", family="har") for s in (first, second)
    )
    assert received == sent * len(devices)


def test_restored_buffers_count_toward_max_devices(serve, device, tmp_path):
    path = tmp_path / "serve.state"
    first = serve(state_file=path)
    for i in range(5):
        device.samples(f"few-{i}", 0, 30)  # partial windows only, few-4 seen last
    _wait_until(
        lambda: first.metrics.value("harstream_samples_total", family="har") == 150, "readings"
    )
    first.stop()
    second = serve(state_file=path, max_devices=3)
    kept = [d for d, _buffer, _seen in second._served["accel"].table.entries()]
    assert kept == ["few-2", "few-3", "few-4"]
    assert second.metrics.value("harstream_evictions_total", family="har", reason="capacity") == 2


def test_sigterm_restart_of_the_process_predicts_every_window(
    broker, har_model_path, prefix, tmp_path
):
    if broker.kind == "amqtt":
        pytest.skip("amqtt keeps no messages for an anonymous client while it is away")
    path = tmp_path / "serve.state"
    watcher = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    devices = [f"proc-{i}" for i in range(3)]
    procs = []
    streamer = None
    try:
        procs.append(
            _serve_process(broker, har_model_path, prefix, tmp_path, "--state-file", str(path))
        )
        watcher.wait_for("service", 1, "status")
        streamer = Streamer(watcher, devices, 0.01)
        watcher.wait_for(devices[0], 3)
        procs[0].send_signal(signal.SIGTERM)
        _, stderr = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 0, stderr[-2000:]
        assert "event=state_saved" in stderr and path.is_file()
        procs.append(
            _serve_process(broker, har_model_path, prefix, tmp_path, "--state-file", str(path))
        )
        statuses = watcher.wait_for("service", 3, "status")  # online, offline, online
        assert statuses[-1]["status"] == "online"
        assert not path.exists()
        done = len(watcher.json_of(devices[0]))
        watcher.wait_for(devices[0], done + 3)
        sent = streamer.stop()
        assert_every_window_once(watcher, devices, sent)
        procs[1].send_signal(signal.SIGTERM)
        _, stderr = procs[1].communicate(timeout=60)
        assert "event=state_restored family=har devices=3" in stderr
    finally:
        if streamer is not None:
            streamer.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        watcher.close()


def test_unreachable_broker_fails_clearly(har_predictor):
    cfg = BrokerConfig(port=free_port(), explicit=True)
    config = ServeConfig(broker=cfg, families=["har"], connect_timeout=0.5)
    with pytest.raises(ConnectionError, match="connection refused: nothing listens on"):
        Service(config, predictors={"har": har_predictor}).start()


@pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("openssl") is None,
    reason="needs the mosquitto and openssl binaries",
)
def test_tls_with_client_certificates(har_predictor, prefix):
    # mosquitto started as root reads its certificates as the "mosquitto" user: a private
    # but world-readable directory, not pytest's root-only tmp_path
    tmp = Path(tempfile.mkdtemp(prefix="harstream-tls-"))
    tmp.chmod(0o755)
    files = make_certificates(tmp)
    for path in files.values():
        path.chmod(0o644)
    extra = (
        f"cafile {files['ca.pem']}\ncertfile {files['server.pem']}\n"
        f"keyfile {files['server.key']}\nrequire_certificate true\n"
    )
    own = MosquittoBroker(free_port(), extra=extra)
    own.start()
    tls = {
        "tls": True,
        "ca_file": files["ca.pem"],
        "cert_file": files["client.pem"],
        "key_file": files["client.key"],
    }
    cfg = BrokerConfig(
        host=own.host, port=own.port, client_id=f"serve-{prefix}", explicit=True, **tls
    )
    service = Service(
        ServeConfig(broker=cfg, prefix=prefix, families=["har"]), predictors={"har": har_predictor}
    ).start()
    try:
        dev = Client(own.host, own.port, prefix, **tls)
        dev.samples("secure", 0, 80)
        (pred,) = dev.wait_for("secure", 1)
        assert pred["seq"] == 1
        # the bench's load generator speaks TLS with client certificates too
        inbox: list[bytes] = []
        wire_cfg = replace(cfg, client_id=f"wire-{prefix}")
        wire = WireClient(wire_cfg, lambda _topic, payload, _t: inbox.append(payload))
        wire.subscribe([f"{prefix}/secure/activity"], 1)
        dev.samples("secure", 80, 20)
        dev.wait_for("secure", 2)
        deadline = time.monotonic() + WAIT
        while not inbox and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(inbox[0])["seq"] == 2
        wire.close()
        dev.close()
    finally:
        service.stop()
        own.close()
        shutil.rmtree(tmp)


def test_retained_readings_are_ignored(serve, device, broker):
    device.client.publish(f"{device.prefix}/old/accel", b'{"x": 1, "y": 2, "z": 3}', 1, True)
    time.sleep(0.3)
    service = serve()  # subscribing delivers the retained reading: stale, not a sample
    device.samples("old", 0, 80)
    (pred,) = device.wait_for("old", 1)
    assert pred["window"]["start"] == T0
    dropped = service.metrics.value("harstream_drops_total", family="har", reason="retained")
    # Mosquitto delivers it once per subscription; amqtt also again when the session starts
    assert dropped == 1 if broker.kind == "mosquitto" else dropped >= 1
    device.client.publish(f"{device.prefix}/old/accel", b"", 1, True)  # clear it


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs the mosquitto binary")
def test_broker_drop_count_is_exported(serve, broker):
    if broker.kind != "mosquitto":
        pytest.skip("only Mosquitto publishes its drop count")
    service = serve()
    deadline = time.monotonic() + WAIT
    while service.metrics.registry.get_sample_value("harstream_broker_dropped_messages") is None:
        assert time.monotonic() < deadline, "no $SYS drop count arrived"
        time.sleep(0.05)
