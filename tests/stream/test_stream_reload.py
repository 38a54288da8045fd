"""Model reload: a new checkpoint swapped in while devices stream, no window lost, and a bad
checkpoint that keeps the old model, in process and through SIGHUP to ``harstream serve``."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from pathlib import Path

import pytest
from bus_client import WAIT, Client
from test_stream_calibration import SERVE, bout, calibrate, send
from test_stream_service import Streamer, _serve_process, assert_every_window_once

from harstream.models.checkpoint import META_FILE, PARAMS_FILE


def new_version(path: Path, version: str) -> None:
    """Give the checkpoint at ``path`` another version, in place."""
    meta = json.loads((path / META_FILE).read_text())
    meta["version"] = version
    (path / META_FILE).write_text(json.dumps(meta))


def corrupt(path: Path, version: str) -> None:
    """A checkpoint whose metadata names a new version but whose weights are cut short."""
    new_version(path, version)
    params = path / PARAMS_FILE
    params.write_bytes(params.read_bytes()[:100])


@pytest.fixture
def model(har_model_path: Path, tmp_path: Path) -> Path:
    """A copy of the test HAR checkpoint (version ``test``) that a test may rewrite."""
    return Path(shutil.copytree(har_model_path, tmp_path / "har-cnn"))


def wait_status(client: Client, what: str, condition) -> dict:
    """The first retained status for which ``condition`` holds."""
    deadline = time.monotonic() + WAIT
    while True:
        statuses = client.json_of("service", "status")
        for status in statuses:
            if condition(status):
                return status
        assert time.monotonic() < deadline, f"no status with {what}: {statuses[-2:]}"
        time.sleep(0.05)


def models_in_order(client: Client, devices: list[str]) -> None:
    """Each device's predictions came from the old model, then only from the new one."""
    for d in devices:
        tags = [p["model"] for p in sorted(client.json_of(d), key=lambda p: p["seq"])]
        changes = [i for i in range(1, len(tags)) if tags[i] != tags[i - 1]]
        assert len(changes) <= 1, f"{d}: models alternate {tags}"


def test_a_reload_swaps_the_model_while_devices_stream_and_loses_no_window(
    serve, device, model, caplog
):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    service = serve(models={"har": model})
    devices = [f"r-{i}" for i in range(4)]
    streamer = Streamer(device, devices, 0.005)
    try:
        device.wait_for(devices[0], 3)
        new_version(model, "test-2")
        assert service.reload() == {}
        done = len(device.json_of(devices[0]))
        device.wait_for(devices[0], done + 3)
    finally:
        sent = streamer.stop()
    expected = assert_every_window_once(device, devices, sent)
    models_in_order(device, devices)
    for d in devices:
        preds = sorted(device.json_of(d), key=lambda p: p["seq"])
        assert preds[0]["model"] == "har-cnn@test" and preds[-1]["model"] == "har-cnn@test-2"
    assert service.metrics.value("harstream_windows_classified_total", family="har") == (
        expected * len(devices)
    )
    status = wait_status(device, "the new model", lambda s: s["models"]["har"] == "har-cnn@test-2")
    assert status["status"] == "online"
    assert status["reload"]["loaded"] == {"har": "har-cnn@test-2"}
    assert status["reload"]["errors"] == {}
    assert service.metrics.value("harstream_reloads_total", family="har", result="ok") == 1
    (line,) = [r.message for r in caplog.records if "event=model_reloaded" in r.message]
    assert "old=har-cnn@test new=har-cnn@test-2" in line and "devices_restarted=0" in line


def test_a_bad_checkpoint_keeps_the_old_model_and_says_why(serve, device, model, caplog):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    service = serve(models={"har": model})
    device.samples("steady", 0, 80)
    device.wait_for("steady", 1)
    corrupt(model, "test-broken")
    errors = service.reload()
    assert list(errors) == ["har"] and PARAMS_FILE in errors["har"], errors
    device.samples("steady", 80, 20)
    second = device.wait_for("steady", 2)[-1]
    assert second["model"] == "har-cnn@test", "the old model must go on serving"
    status = wait_status(device, "the reload error", lambda s: s.get("reload") is not None)
    assert status["models"] == {"har": "har-cnn@test"}
    assert status["reload"]["errors"] == errors and status["reload"]["loaded"] == {}
    assert service.metrics.value("harstream_reloads_total", family="har", result="failed") == 1
    (record,) = [r for r in caplog.records if "event=reload_failed" in r.message]
    assert record.levelno == logging.ERROR and "still serving har-cnn@test" in record.message


def test_a_calibration_stays_with_the_model_version_it_was_made_for(serve, device, model, tmp_path):
    service = serve(models={"har": model}, calibration_store=tmp_path / "cal.sqlite", **SERVE)
    calibrate(device, "w", bout(0, (0.0, 10.0, 10.0), 6), bout(1, (0.0, 0.0, -10.0), 4))
    later = bout(2, (-10.0, -10.0, -10.0), 4)

    def next_prediction(k: int) -> dict:
        send(device, "w", later[k : k + 1], 10 + k)
        return device.wait_for("w", 11 + k)[-1]

    assert next_prediction(0)["calibrated"]
    assert service.reload() == {}  # the same version: its calibration comes back
    assert next_prediction(1)["calibrated"]
    new_version(model, "test-2")
    assert service.reload() == {}
    pred = next_prediction(2)
    assert pred["model"] == "har-cnn@test-2" and not pred["calibrated"], "set aside"
    new_version(model, "test")
    assert service.reload() == {}
    assert next_prediction(3)["calibrated"], "its version is back, and so is it"


def test_the_reload_topic_is_off_unless_asked_for(serve, device, model, prefix, broker):
    service = serve(models={"har": model})
    new_version(model, "test-2")
    device.client.publish(f"{prefix}/service/reload", b"", qos=1).wait_for_publish(WAIT)
    device.settle()
    assert service.metrics.value("harstream_reloads_total", family="har", result="ok") == 0
    service.stop()
    topic_service = serve(models={"har": model}, reload_topic=True, client_id=f"topic-{prefix}")
    new_version(model, "test-3")
    device.client.publish(f"{prefix}/service/reload", b"", qos=1)
    wait_status(device, "the reloaded model", lambda s: s["models"]["har"] == "har-cnn@test-3")
    assert topic_service.metrics.value("harstream_reloads_total", family="har", result="ok") == 1


def test_sighup_reloads_the_models_of_harstream_serve(broker, model, prefix, tmp_path):
    if broker.kind == "amqtt":
        pytest.skip("the window count relies on Mosquitto's QoS 1 delivery to the session")
    watcher = Client(broker.host, broker.port, prefix, broker.mqtt_version)
    devices = [f"hup-{i}" for i in range(3)]
    proc = _serve_process(broker, model, prefix, tmp_path, "--state-file", "")
    streamer = None
    try:
        wait_status(watcher, "the first model", lambda s: s["models"]["har"] == "har-cnn@test")
        streamer = Streamer(watcher, devices, 0.01)
        watcher.wait_for(devices[0], 2)
        new_version(model, "test-2")
        proc.send_signal(signal.SIGHUP)
        wait_status(watcher, "the new model", lambda s: s["models"]["har"] == "har-cnn@test-2")
        done = len(watcher.json_of(devices[0]))
        watcher.wait_for(devices[0], done + 2)
        corrupt(model, "test-3")
        proc.send_signal(signal.SIGHUP)
        failed = wait_status(
            watcher, "the reload error", lambda s: (s.get("reload") or {}).get("errors")
        )
        assert failed["models"] == {"har": "har-cnn@test-2"}
        assert PARAMS_FILE in failed["reload"]["errors"]["har"]
        done = len(watcher.json_of(devices[0]))
        watcher.wait_for(devices[0], done + 2)
        sent = streamer.stop()
        assert_every_window_once(watcher, devices, sent)
        models_in_order(watcher, devices)
        assert watcher.json_of(devices[0])[-1]["model"] == "har-cnn@test-2"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr[-2000:]
        assert "event=model_reloaded family=har old=har-cnn@test new=har-cnn@test-2" in stderr
        assert "event=reload_failed family=har model=har-cnn@test-2" in stderr
    finally:
        if streamer is not None:
            streamer.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        watcher.close()
