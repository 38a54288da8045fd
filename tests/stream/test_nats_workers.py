"""Workers behind NATS (``serve --nats``) on a real nats-server running the example config.

Each test starts its own ``nats-server -c examples/nats/nats-server.conf`` (ports, MQTT
address and JetStream folder replaced by free loopback ones) and replays devices through
its MQTT listener, as real devices would publish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bus_client import T0, Client

from harstream.stream.nats_server import NatsServer, nats_server_binary

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "har"  # the example's subject mapping is for har/<id>/accel and har/<id>/label
WINDOW, HOP = 80, 20
CHUNK = 10  # samples per message
LEASE_TTL = 2.0
# A window ends every HOP samples once WINDOW are in: (n - WINDOW) // HOP + 1 of n samples.
# A worker killed with a device's partial window loses the windows that would have held
# the readings it had acknowledged: at most WINDOW / HOP of them.
MAX_LOST_PER_DEVICE = WINDOW // HOP

pytestmark = pytest.mark.skipif(
    nats_server_binary() is None,
    reason="nats-server is not installed (apt-get install nats-server; .ci/run installs it)",
)


def expected_windows(samples: int) -> int:
    return max(0, (samples - WINDOW) // HOP + 1)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(nats_server_binary() or "nats-server")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def workers(nats_server, har_predictor):
    """``start(name)``: an in-process worker on ``nats_server`` (its NatsInput); each
    stopped at teardown, or before by ``start.stop(name)``."""
    from harstream.stream.config import ServeConfig
    from harstream.stream.connection import BrokerConfig
    from harstream.stream.nats_input import NatsConfig, NatsInput, parse_owns
    from harstream.stream.service import Service

    started: dict[str, Service] = {}

    def start(
        name: str, lease_ttl: float = LEASE_TTL, owns: str | None = None, **overrides
    ) -> NatsInput:
        source = NatsInput(
            NatsConfig(
                nats_server.url,
                partitions=8,
                lease_ttl=lease_ttl,
                worker=name,
                owns=None if owns is None else parse_owns(owns),
            ),
            prefix=PREFIX,
        )
        broker = BrokerConfig(
            host=nats_server.host,
            port=nats_server.mqtt_port,
            mqtt_version="3.1.1",
            client_id=f"serve-{name}",
            explicit=True,
        )
        config = ServeConfig(
            broker=broker,
            prefix=PREFIX,
            families=["har"],
            max_batch=16,
            device_rate_margin=0,  # replayed faster than real time
            embedded_broker=False,
            calibration_store=source.calibration_store(),
            **overrides,
        )
        started[name] = Service(config, predictors={"har": har_predictor}, source=source)
        started[name].start()
        return source

    start.stop = lambda name: started.pop(name).stop()
    yield start
    for service in started.values():
        service.stop()


def serve_process(server: NatsServer, model: Path, name: str, state: Path) -> subprocess.Popen:
    """``harstream serve --nats`` as a subprocess (to be killed like a crash)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(state)}
    cmd = [
        sys.executable,
        "-m",
        "harstream",
        "serve",
        "--nats",
        server.url,
        "--broker",
        server.mqtt_url,
        "--model",
        str(model),
        "--families",
        "har",
        "--max-batch",
        "16",
        "--device-rate-margin",
        "0",
        "--worker-name",
        name,
        "--lease-ttl",
        str(LEASE_TTL),
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def balanced(sources, total_workers: int) -> bool:
    """The in-process ``sources`` hold a fair share each of 8 partitions among
    ``total_workers`` (3 workers: 3, 3 and 2)."""
    quota = -(-8 // total_workers)
    owned = [len(s.owned()) for s in sources]
    return all(0 < n <= quota for n in owned) and 8 - sum(owned) <= quota * (
        total_workers - len(sources)
    )


def publish(client: Client, devices: list[str], start: int, stop: int, pace_s: float = 0.0):
    """Samples ``start..stop-1`` of every device, CHUNK per message, timestamped at 20 Hz;
    ``pace_s`` between rounds of one message per device."""
    for first in range(start, stop, CHUNK):
        for device in devices:
            rows = [[float((first + i) % 7), 1.0, 9.8] for i in range(CHUNK)]
            client.publish(device, {"samples": rows, "rate_hz": 20, "t0": T0 + first / 20})
        if pace_s:
            time.sleep(pace_s)


def windows_of(client: Client, device: str) -> list[tuple[float, float]]:
    return [(p["window"]["start"], p["window"]["end"]) for p in client.json_of(device)]


def test_three_workers_predict_every_window_once_each_device_on_one_worker(
    nats_server, workers
) -> None:
    sources = [workers(f"w{i}") for i in range(3)]
    wait_until(lambda: balanced(sources, 3), what="3 workers to share 8 partitions")
    assert sorted(p for s in sources for p in s.owned()) == list(range(8))
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    devices = [f"dev-{i:02d}" for i in range(30)]
    samples = 400
    publish(client, devices, 0, samples)
    want = expected_windows(samples)
    for device in devices:
        client.wait_for(device, want)
    client.settle(1.0)
    for device in devices:
        got = client.json_of(device)
        assert [p["seq"] for p in got] == list(range(1, want + 1)), device
        assert len(set(windows_of(client, device))) == want  # no window predicted twice
    seen = [s.devices_seen() for s in sources]
    assert set().union(*seen) == set(devices)
    assert sum(len(s) for s in seen) == len(devices)  # each device on one worker only
    client.close()


def test_worker_added_midstream_takes_partitions_without_cutting_a_window(
    nats_server, workers
) -> None:
    first = [workers("a"), workers("b")]
    wait_until(lambda: balanced(first, 2), what="2 workers to share 8 partitions")
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    devices = [f"dev-{i:02d}" for i in range(30)]
    samples = 600
    sender = threading.Thread(target=publish, args=(client, devices, 0, samples, 0.1))
    sender.start()
    time.sleep(1.0)  # mid-stream: every device has a partial window somewhere
    third = workers("c")
    wait_until(lambda: balanced([*first, third], 3), what="the new worker's share")
    sender.join()
    want = expected_windows(samples)
    for device in devices:
        client.wait_for(device, want)
    client.settle(1.0)
    moved = third.devices_seen()
    assert moved, "the added worker took no device"
    for device in devices:
        got = client.json_of(device)
        # the same windows, numbered without a gap, as one uninterrupted service cuts them
        assert [p["seq"] for p in got] == list(range(1, want + 1)), device
        starts = [p["window"]["start"] for p in got]
        assert starts == pytest.approx([T0 + k * HOP / 20 for k in range(want)]), device
    client.close()


def test_killed_worker_loses_at_most_its_partial_windows(
    nats_server, workers, har_model_path, tmp_path
) -> None:
    victim = serve_process(nats_server, har_model_path, "victim", tmp_path)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(victim.stderr), daemon=True)
        reader.start()
        wait_until(lambda: any("event=nats_serving" in ln for ln in lines), 180, "the victim")
        others = [workers("a"), workers("b")]
        wait_until(lambda: balanced(others, 3), what="3 workers to share 8 partitions")
        victims = sorted(set(range(8)) - {p for s in others for p in s.owned()})
        assert victims
        client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
        devices = [f"dev-{i:02d}" for i in range(30)]
        samples = 600
        sender = threading.Thread(target=publish, args=(client, devices, 0, samples, 0.1))
        sender.start()
        time.sleep(1.5)  # mid-stream: the victim holds partial windows
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        survivors = set().union(*(s.devices_seen() for s in others))
        wait_until(
            lambda: sorted(p for s in others for p in s.owned()) == list(range(8)),
            what="the victim's partitions taken over",
        )
        took_s = time.monotonic() - killed_at
        sender.join()
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
    assert took_s < 4 * LEASE_TTL
    want = expected_windows(samples)
    client.settle(2.0)
    lost = {}
    for device in devices:
        ends = [end for _, end in windows_of(client, device)]
        assert len(ends) == len(set(ends)), f"{device}: a window predicted twice"
        assert ends == sorted(ends), device
        lost[device] = want - len(ends)
    moved = [d for d in devices if d not in survivors]
    print(
        f"\nvictim partitions {victims}, devices {len(moved)}; takeover {took_s:.1f} s; "
        f"windows lost {sum(lost.values())} of {want * len(moved)}: "
        f"{ {d: lost[d] for d in moved} }"
    )
    assert moved
    for device in survivors:
        assert lost[device] == 0, f"{device} was never on the victim but lost windows"
    for device in moved:
        assert 0 <= lost[device] <= MAX_LOST_PER_DEVICE, f"{device} lost {lost[device]}"
    client.close()


def test_a_calibration_follows_its_device_to_the_next_worker(
    nats_server, workers, har_predictor
) -> None:
    from test_stream_calibration import SERVE, WINDOW_S, bout, calibrate, offline, probs_of, send

    sitting, walking, test = (
        bout(0, (0.0, 10.0, 10.0), 6),
        bout(1, (0.0, 0.0, -10.0), 4),
        bout(2, (-10.0, -10.0, -10.0), 4),
    )
    first = workers("a", hop=SERVE["hop"])
    wait_until(lambda: len(first.owned()) == 8, what="the first worker's partitions")
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    calibrate(client, "wrist-n", sitting, walking)
    assert "wrist-n" in first.devices_seen()
    second = workers("b", hop=SERVE["hop"])
    workers.stop("a")  # hands every partition over
    wait_until(lambda: len(second.owned()) == 8, what="the second worker's partitions")
    send(client, "wrist-n", test, 100)  # much later: a new segment
    preds = client.wait_for("wrist-n", len(sitting) + len(walking) + len(test))
    after = [p for p in preds if p["window"]["start"] >= T0 + 100 * WINDOW_S]
    assert "wrist-n" in second.devices_seen()
    assert len(after) == 4 and all(p["calibrated"] for p in after)
    want, _ = offline(har_predictor, sitting, walking, test)
    np.testing.assert_allclose([probs_of(p) for p in after], want, atol=1e-4)  # 4 decimals
    client.close()


def test_a_nats_server_restart_loses_no_window(nats_server, workers) -> None:
    # leases, stream and consumers are on disk: the workers keep their partitions and
    # buffers across the restart (a lease outlives an outage shorter than its ttl)
    sources = [workers("a", lease_ttl=8.0), workers("b", lease_ttl=8.0)]
    wait_until(lambda: balanced(sources, 2), what="2 workers to share 8 partitions")
    held = [s.owned() for s in sources]
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    devices = [f"dev-{i:02d}" for i in range(12)]
    publish(client, devices, 0, 250)  # 9 windows each and a partial one
    for device in devices:
        client.wait_for(device, expected_windows(250))
    nats_server.stop()
    nats_server.start()
    client.close()
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    publish(client, devices, 250, 400)
    want = expected_windows(400) - expected_windows(250)
    for device in devices:
        got = client.wait_for(device, want)
        assert [p["seq"] for p in got] == list(range(expected_windows(250) + 1, 18)), device
    assert [s.owned() for s in sources] == held
    client.close()


def test_deliveries_dropped_by_a_slow_client_are_delivered_again(
    nats_server, workers, monkeypatch
) -> None:
    from harstream.stream import nats_input

    first = workers("a")  # creates the stream and the partitions' consumers
    wait_until(lambda: len(first.owned()) == 8, what="the first worker's partitions")
    workers.stop("a")
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    devices = [f"dev-{i:02d}" for i in range(30)]
    publish(client, devices, 0, 300)  # kept in the stream: about 110 messages a partition
    time.sleep(2.0)
    # The next worker gets that backlog at once, and its client holds only 32 a partition
    # and drops the rest: gaps in the consumer's deliveries (as a lost connection makes
    # them), which the worker must neither skip nor acknowledge.
    monkeypatch.setattr(nats_input, "PENDING_MESSAGES", 32)
    source = workers("b")
    want = expected_windows(300)
    # each resume takes tens of milliseconds and the backlog needs several: wait longer
    # than the client's usual 20 s on a busy machine
    wait_until(lambda: all(len(client.json_of(d)) >= want for d in devices), 120, "windows")
    client.settle(1.0)
    for device in devices:
        assert [p["seq"] for p in client.json_of(device)] == list(range(1, want + 1)), device
    assert source.resumed() > 0, "no delivery was dropped: the test proves nothing"
    client.close()


def test_explicit_owners_split_the_partitions_as_told(nats_server, workers) -> None:
    low, high = workers("low", owns="0-3"), workers("high", owns="4-7")
    wait_until(lambda: low.owned() == [0, 1, 2, 3] and high.owned() == [4, 5, 6, 7])
    client = Client(nats_server.host, nats_server.mqtt_port, PREFIX, "3.1.1")
    devices = [f"dev-{i:02d}" for i in range(12)]
    publish(client, devices, 0, 200)
    want = expected_windows(200)
    for device in devices:
        client.wait_for(device, want)
    client.settle(1.0)
    for device in devices:
        assert [p["seq"] for p in client.json_of(device)] == list(range(1, want + 1)), device
    assert not low.devices_seen() & high.devices_seen()
    assert low.devices_seen() | high.devices_seen() == set(devices)
    client.close()
