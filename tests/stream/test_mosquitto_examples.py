"""The example Mosquitto deployments, run for real: persistence across a broker crash, and
the locked-down bus (users, per-device ACL) built from the files in ``examples/``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bus_client import T0, WAIT, Client, service_broker

from harstream.stream.broker import LOOPBACK, MosquittoBroker, free_port, mosquitto_binary
from harstream.stream.config import ServeConfig
from harstream.stream.connection import BrokerConfig, broker_config, connect, make_client
from harstream.stream.preflight import (
    EXIT_NOT_AUTHORIZED,
    EXIT_UNREACHABLE,
    BrokerError,
    check_broker,
)
from harstream.stream.service import Service

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")


def _option_lines(name: str) -> Iterator[tuple[str, str, str]]:
    """``(line, option, value)`` for each line of ``examples/<name>`` (option "" if none)."""
    for line in (EXAMPLES / name).read_text().splitlines():
        words = line.split(maxsplit=1) if not line.lstrip().startswith("#") else []
        yield line, words[0] if words else "", words[1] if len(words) > 1 else ""


def example_settings(name: str) -> dict[str, str]:
    return {option: value for _line, option, value in _option_lines(name) if option}


def example_config(name: str, port: int, **settings: str) -> str:
    """``examples/<name>`` listening on a loopback ``port``, with ``settings`` replacing the
    values of those options (each must be in the file: the example is what is tested)."""
    lines, replaced = [], set()
    for line, option, _value in _option_lines(name):
        if option == "listener":
            line = f"listener {port} {LOOPBACK}"
        elif option in settings:
            line = f"{option} {settings[option]}"
            replaced.add(option)
        lines.append(line)
    assert replaced == set(settings), f"{name} lacks {set(settings) - replaced}"
    return "\n".join(lines) + "\n"


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A directory the broker can use after it drops root for the ``mosquitto`` user:
    readable files, and ``data/`` writable for its persistence."""
    path = Path(tempfile.mkdtemp(prefix="harstream-broker-"))
    path.chmod(0o755)
    (path / "data").mkdir()
    (path / "data").chmod(0o777)
    yield path
    shutil.rmtree(path)


def start_service(cfg: BrokerConfig, har_predictor, **overrides) -> Service:
    config = ServeConfig(broker=cfg, families=["har"], max_batch=16, **overrides)
    return Service(config, predictors={"har": har_predictor}).start()


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def window(t0: float, n: int) -> bytes:
    """``n`` samples at 20 Hz from ``t0`` in one message."""
    return json.dumps({"samples": [[1.0, 2.0, 9.8]] * n, "t0": t0}).encode()


def log_lines(caplog, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"event={event}" in r.getMessage()]


# --------------------------------------------------------------------- broker persistence


@needs_mosquitto
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_broker_that_lost_the_session_is_reported(har_predictor, prefix, caplog, version):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    own = MosquittoBroker(free_port())  # no persistence: a crash loses every session
    own.start()
    cfg = service_broker(own.host, own.port, version, prefix)
    service = start_service(cfg, har_predictor, prefix=prefix)
    watcher = None
    try:
        lost = "harstream_sessions_lost_total"
        assert service.metrics.value(lost) == 0, "a fresh client id's first connect is no loss"
        own.stop(kill=True)
        own.start()
        wait_until(
            lambda: service.metrics.value("harstream_broker_connects_total") >= 2,
            "the service did not reconnect",
        )
        assert service.metrics.value(lost) == 1
        (warning,) = log_lines(caplog, "session_lost")
        assert warning.levelno == logging.WARNING
        assert "autosave_interval" in warning.getMessage()
        # the restarted broker lost the retained status too: the service published it again
        watcher = Client(own.host, own.port, prefix, version)
        assert watcher.wait_for("service", 1, "status")[-1]["status"] == "online"
        watcher.samples("d", 0, 80)
        assert watcher.wait_for("d", 1)[0]["seq"] == 1
        assert service.metrics.value(lost) == 1
    finally:
        if watcher is not None:
            watcher.close()
        service.stop()
        own.close()


@needs_mosquitto
def test_with_the_example_persistence_a_killed_broker_keeps_the_session(
    har_predictor, prefix, caplog, broker_dir
):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    data = f"{broker_dir}/data/"

    def example_broker(port: int) -> MosquittoBroker:
        config = example_config("mosquitto.conf", port, persistence_location=data)
        return MosquittoBroker(port, config=config)

    own = example_broker(free_port())
    own.start()
    cfg = BrokerConfig(host=own.host, port=own.port, client_id=f"serve-{prefix}", explicit=True)
    service = start_service(cfg, har_predictor, prefix=prefix)
    elsewhere = None
    try:
        topic = f"{prefix}/d/accel"
        dev = Client(own.host, own.port, prefix)
        dev.client.publish(topic, window(T0, 40), qos=1)  # the first half of a window
        samples = "harstream_samples_total"
        wait_until(lambda: service.metrics.value(samples, family="har") == 40, "no samples")
        dev.close()
        time.sleep(2.5)  # autosave_interval 1 saves every 1-2 s
        own.stop(kill=True)
        # The crashed broker's data, restarted on another port: the service cannot
        # reconnect yet, so the second half waits in the session restored from the autosave.
        elsewhere = example_broker(free_port())
        elsewhere.start()
        late = Client(elsewhere.host, elsewhere.port, prefix)
        late.client.publish(topic, window(T0 + 2.0, 40), qos=1).wait_for_publish(WAIT)
        late.close()
        elsewhere.close()  # a clean stop saves the queued half
        own.start()
        wait_until(
            lambda: service.metrics.value(samples, family="har") == 80,
            "the readings published while the service was away did not arrive",
        )
        wait_until(
            lambda: service.metrics.value("harstream_predictions_total", family="har") == 1,
            "the window was not completed",
        )
        assert service.metrics.value("harstream_sessions_lost_total") == 0
        assert not log_lines(caplog, "session_lost")
        connected = [r.getMessage() for r in log_lines(caplog, "connected")]
        assert connected[-1].endswith("session_present=True"), connected
    finally:
        service.stop()
        own.close()
        if elsewhere is not None:
            elsewhere.close()


# --------------------------------------------------------------------- the conf.d drop-in

# /etc/mosquitto/mosquitto.conf as Debian 12 ships it, its paths moved to a test folder
# that the broker's user may write (and logging to stderr rather than /var/log)
DEBIAN_MAIN = """\
pid_file {path}/data/mosquitto.pid
persistence true
persistence_location {path}/data/
log_dest stderr
include_dir {path}/conf.d
"""


def debian_broker(path: Path, *drop_ins: Path) -> MosquittoBroker:
    """Mosquitto from Debian's main file, with ``drop_ins`` copied into its conf.d beside
    a listener on a free port (Debian's own is localhost:1883)."""
    conf_d = path / "conf.d"
    conf_d.mkdir()
    port = free_port()
    (conf_d / "listener.conf").write_text(f"listener {port} {LOOPBACK}\nallow_anonymous true\n")
    for drop_in in drop_ins:
        shutil.copy(drop_in, conf_d)
    return MosquittoBroker(port, config=DEBIAN_MAIN.format(path=path))


@needs_mosquitto
def test_the_conf_d_drop_in_fits_a_distribution_config_and_ends_the_nagle_delay(
    har_predictor, prefix, broker_dir, caplog
):
    caplog.set_level(logging.INFO, logger="harstream.stream.service")
    drop_in = EXAMPLES / "mosquitto-conf.d" / "harstream.conf"
    rtt = {}
    for case, drop_ins in (("stock", ()), ("drop-in", (drop_in,))):
        path = broker_dir / case
        path.mkdir(mode=0o755)
        (path / "data").mkdir(mode=0o777)
        (path / "data").chmod(0o777)
        own = debian_broker(path, *drop_ins)
        own.start()  # raises if Mosquitto refuses the configuration
        client_id = f"{case}-{prefix}"
        cfg = BrokerConfig(host=own.host, port=own.port, client_id=client_id, explicit=True)
        try:
            service = start_service(cfg, har_predictor, prefix=prefix)
            rtt[case] = service.broker_rtt_s
            service.stop()
        finally:
            own.close()
        if case == "stock":
            (warning,) = log_lines(caplog, "broker_slow")
            assert "set_tcp_nodelay true" in warning.getMessage()
            assert "mosquitto-conf.d/harstream.conf" in warning.getMessage()
    # peers in the same run: 41-48 ms for every second probe without, 0.1 ms with
    assert rtt["drop-in"] * 4 < rtt["stock"], rtt


@needs_mosquitto
def test_a_second_persistence_location_stops_mosquitto(broker_dir):
    """Why the drop-in leaves the persistence settings to the distribution's file."""
    clash = broker_dir / "clash.conf"
    clash.write_text(f"persistence_location {broker_dir}/data/\n")
    own = debian_broker(broker_dir, clash)
    with pytest.raises(RuntimeError, match="persistence_location"):
        own.start()
    own.close()


# --------------------------------------------------------------------- the secured bus


class SecureBus:
    """Mosquitto run from examples/mosquitto-secure.conf and examples/mosquitto-acl, with
    users made by examples/mosquitto-users.sh; each user's password is in ``secrets/<user>``."""

    USERS = ("harstream", "dev-a", "dev-b", "harstream-ops", "harstream-dashboard")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.secrets = path / "secrets"
        passwd, acl = path / "passwd", path / "acl"
        shutil.copy(EXAMPLES / "mosquitto-acl", acl)
        script = EXAMPLES / "mosquitto-users.sh"
        subprocess.run(
            ["sh", str(script), str(passwd), str(self.secrets), *self.USERS],
            check=True,
            capture_output=True,
        )
        port = free_port()
        config = example_config(
            "mosquitto-secure.conf",
            port,
            password_file=str(passwd),
            acl_file=str(acl),
            persistence_location=f"{path}/data/",
        )
        self.broker = MosquittoBroker(port, config=config)
        self.host, self.port = self.broker.host, self.broker.port

    def password(self, user: str) -> str:
        return (self.secrets / user).read_text().strip()

    def device(self, user: str) -> Client:
        """A client logged in as ``user`` that subscribes to ``har/#`` (what it may read)."""
        return Client(self.host, self.port, "har", username=user, password=self.password(user))

    def refusal(self, username: str | None, password: str | None) -> str:
        """The broker's answer to a login, or "accepted"."""
        cfg = BrokerConfig(
            host=self.host, port=self.port, client_id=f"probe-{username}", username=username,
            password=password,
        )  # fmt: skip
        client = make_client(cfg, persistent=False)
        answered, answer = threading.Event(), []

        def on_connect(_c, _u, _f, reason, _p) -> None:
            answer.append("accepted" if not reason.is_failure else str(reason))
            answered.set()

        client.on_connect = on_connect
        connect(client, cfg, persistent=False)
        assert answered.wait(WAIT)
        client.disconnect()
        client.loop_stop()
        return answer[0]


@pytest.fixture
def secure_bus(broker_dir) -> Iterator[SecureBus]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd")
    bus = SecureBus(broker_dir)
    bus.broker.start()
    yield bus
    bus.broker.close()


def service_config(bus: SecureBus, client_id: str) -> BrokerConfig:
    """The service's broker options as ``harstream serve`` resolves them, password by file."""
    args = {
        "broker": f"mqtt://{bus.host}:{bus.port}",
        "username": "harstream",
        "password_file": str(bus.secrets / "harstream"),
        "client_id": client_id,
    }
    return broker_config(args, default_client_id="unused", env={})


@needs_mosquitto
def test_devices_reach_only_their_own_topics(secure_bus, har_predictor):
    service = start_service(service_config(secure_bus, "serve-secure"), har_predictor)
    a, b = secure_bus.device("dev-a"), secure_bus.device("dev-b")
    try:
        # dev-a tries to fake its own result and state, to feed dev-b's window and to end
        # the service
        a.client.publish("har/dev-a/activity", b'{"activity": "fake"}', qos=1)
        a.client.publish("har/dev-a/state", b'{"activity": "fake"}', qos=1, retain=True)
        a.client.publish("har/dev-b/accel", window(T0, 80), qos=1)
        a.client.publish("har/service/status", b'{"status": "offline"}', qos=1, retain=True)
        a.client.publish("har/dev-a/accel", window(T0, 80), qos=1)
        b.client.publish("har/dev-b/accel", window(T0 + 100, 80), qos=1)
        (pred_a,) = a.wait_for("dev-a", 1)
        (pred_b,) = b.wait_for("dev-b", 1)
        (state_a,) = a.wait_for("dev-a", 1, "state")  # the first answer is a change
        b.wait_for("dev-b", 1, "state")
        a.settle()
        assert pred_a["seq"] == 1 and "probs" in pred_a, "dev-a saw a fake result"
        assert state_a["activity"] == pred_a["activity"] and len(a.json_of("dev-a", "state")) == 1
        assert len(a.json_of("dev-a")) == 1
        assert pred_b["window"]["start"] == T0 + 100, "dev-a's readings reached dev-b's window"
        assert len(b.json_of("dev-b")) == 1
        assert service.metrics.value("harstream_samples_total", family="har") == 160
        # dev-a labels its own readings and reads its own calibration; it can neither label
        # dev-b's readings nor fake its own calibration
        a.client.publish("har/dev-a/calibration", b'{"classes": {"x": 9}}', qos=1, retain=True)
        a.client.publish("har/dev-b/label", b'{"activity": "sitting", "seconds": 10}', qos=1)
        a.client.publish("har/dev-a/label", b'{"activity": "sitting", "seconds": 10}', qos=1)
        a.client.publish("har/dev-a/accel", window(T0 + 4, 80), qos=1)
        b.client.publish("har/dev-b/accel", window(T0 + 104, 80), qos=1)
        (calibration,) = a.wait_for("dev-a", 1, "calibration")
        b.wait_for("dev-b", 2)
        a.settle()
        assert calibration["classes"] == {"sitting": 1}, "dev-a saw a fake calibration"
        assert len(a.json_of("dev-a", "calibration")) == 1
        for suffix in ("activity", "state", "calibration"):
            assert not a.json_of("dev-b", suffix) and not b.json_of("dev-a", suffix), (
                f"a device read another's {suffix}"
            )
        # every user reads the retained status, which no device can overwrite
        late = secure_bus.device("dev-b")
        assert late.wait_for("service", 1, "status")[-1]["status"] == "online"
        late.close()
    finally:
        a.close()
        b.close()
        service.stop()


@needs_mosquitto
def test_only_an_operator_may_ask_for_a_reload(secure_bus, har_model_path, tmp_path):
    model = shutil.copytree(har_model_path, tmp_path / "har-cnn")
    cfg = service_config(secure_bus, "serve-reload")
    service = start_service(cfg, None, reload_topic=True, models={"har": model})
    a, ops = secure_bus.device("dev-a"), secure_bus.device("harstream-ops")
    reloads = "harstream_reloads_total"
    try:
        assert service.broker_rtt_s is not None, "the ACL must let the service time its probes"
        a.client.publish("har/service/reload", b"", qos=1).wait_for_publish(WAIT)
        a.settle()
        assert service.metrics.value(reloads, family="har", result="ok") == 0
        ops.client.publish("har/service/reload", b"", qos=1).wait_for_publish(WAIT)
        wait_until(
            lambda: service.metrics.value(reloads, family="har", result="ok") == 1,
            "the operator's request did not reload the model",
        )
        status = ops.wait_for("service", 2, "status")[-1]
        assert status["reload"]["loaded"] == {"har": "har-cnn@test"}
    finally:
        a.close()
        ops.close()
        service.stop()


@needs_mosquitto
def test_the_dashboard_user_reads_every_device_and_writes_nothing(secure_bus, har_predictor):
    service = start_service(service_config(secure_bus, "serve-dash"), har_predictor)
    board, a = secure_bus.device("harstream-dashboard"), secure_bus.device("dev-a")
    try:
        a.client.publish("har/dev-a/accel", window(T0, 80), qos=1)
        board.wait_for("dev-a", 1)
        board.client.publish("har/dev-a/label", b'{"activity": "sitting", "seconds": 10}', qos=1)
        board.client.publish("har/dev-b/accel", window(T0, 80), qos=1)
        board.settle()
        a.client.publish("har/dev-a/accel", window(T0 + 4, 80), qos=1)
        pred = board.wait_for("dev-a", 2)[-1]
        board.wait_for("dev-a", 1, "state")
        assert board.wait_for("service", 1, "status")[-1]["status"] == "online"
        board.settle()
        assert not board.json_of("dev-a", "calibration") and pred["calibrated"] is False, (
            "the dashboard user's label reached the service"
        )
        assert not board.json_of("dev-b"), "the dashboard user's readings reached the service"
        assert service.metrics.value("harstream_samples_total", family="har") == 160
    finally:
        board.close()
        a.close()
        service.stop()


@needs_mosquitto
def test_anonymous_and_wrong_logins_are_refused(secure_bus):
    assert secure_bus.refusal("dev-a", secure_bus.password("dev-a")) == "accepted"
    assert secure_bus.refusal(None, None) == "Not authorized"
    assert secure_bus.refusal("dev-a", secure_bus.password("dev-b")) == "Not authorized"


@needs_mosquitto
def test_serve_with_a_password_file_keeps_it_out_of_the_process_list(
    secure_bus, har_model_path, tmp_path
):
    watcher = secure_bus.device("dev-a")
    cmd = [
        sys.executable, "-m", "harstream", "serve", "--broker",
        f"mqtt://{secure_bus.host}:{secure_bus.port}", "--username", "harstream",
        "--password-file", str(secure_bus.secrets / "harstream"), "--model", str(har_model_path),
        "--families", "har", "--client-id", "serve-secure-proc",
    ]  # fmt: skip
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}  # its files, never the real home's
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        online = watcher.wait_for("service", 1, "status")[-1]
        assert online["status"] == "online" and online["client_id"] == "serve-secure-proc"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "--password-file" in cmdline
        assert secure_bus.password("harstream") not in cmdline
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        watcher.close()


def serve_briefly(*args: str, env_home: Path) -> tuple[int, str, float]:
    """Run ``harstream serve ARGS`` that is expected to exit by itself: (status, stderr, s)."""
    cmd = [sys.executable, "-m", "harstream", "serve", "--families", "har", *args]
    env = {**os.environ, "XDG_STATE_HOME": str(env_home)}
    began = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, time.monotonic() - began


@needs_mosquitto
def test_a_wrong_password_is_named_before_the_models_load(secure_bus, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text(secure_bus.password("dev-b") + "\n")
    cfg = broker_config(
        {"broker": f"{secure_bus.host}:{secure_bus.port}", "username": "harstream",
         "password_file": str(wrong)},
        default_client_id="serve-wrong", env={},
    )  # fmt: skip
    with pytest.raises(BrokerError) as err:
        check_broker(cfg)
    assert err.value.kind == "not_authorized" and err.value.exit_code == EXIT_NOT_AUTHORIZED
    assert "not authorized" in str(err.value) and "'harstream'" in str(err.value)
    # the command: host:port without a scheme, one line, the documented status, no model
    status, stderr, took = serve_briefly(
        "--broker", f"{secure_bus.host}:{secure_bus.port}", "--username", "harstream",
        "--password-file", str(wrong), env_home=tmp_path,
    )  # fmt: skip
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert status == EXIT_NOT_AUTHORIZED, stderr[-2000:]
    assert (
        len(errors) == 1 and "not authorized" in errors[0] and "check the credentials" in errors[0]
    )
    assert "event=serving" not in stderr and "compil" not in stderr.lower()
    print(f"wrong password: exit {status} after {took:.1f} s (process start included)")


def test_an_unknown_broker_host_is_named_before_the_models_load(tmp_path):
    status, stderr, took = serve_briefly(
        "--broker", "mqtt://no-such-host.invalid:1883", env_home=tmp_path
    )
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert status == EXIT_UNREACHABLE, stderr[-2000:]
    assert len(errors) == 1 and "name resolution failed" in errors[0], stderr[-2000:]
    print(f"unknown host: exit {status} after {took:.1f} s (process start included)")


def test_the_secure_config_keeps_the_tuning_of_the_plain_one():
    plain = example_settings("mosquitto.conf")
    secure = example_settings("mosquitto-secure.conf")
    assert (plain["allow_anonymous"], secure["allow_anonymous"]) == ("true", "false")
    assert {k: secure.get(k) for k in plain if k != "allow_anonymous"} == {
        k: v for k, v in plain.items() if k != "allow_anonymous"
    }
