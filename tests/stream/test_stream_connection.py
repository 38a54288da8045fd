"""The paho client that stream.connection.make_client builds for the service and the tools.

Bursts of thousands of packets in one write (more than a socket read takes at once), and
publishes from another thread than paho's, must all arrive, in order, acknowledged.
"""

from __future__ import annotations

import threading
import time

import pytest

from harstream.bench.mqtt_wire import WireClient, publish_packet
from harstream.stream.connection import BrokerConfig, connect, make_client

BURST = 3000
BURST_BYTES = 128 * 1024  # a burst at least this large arrives over several reads


def _config(broker, client_id: str) -> BrokerConfig:
    return BrokerConfig(
        host=broker.host, port=broker.port, client_id=client_id, mqtt_version=broker.mqtt_version
    )


def _connected(broker, client_id: str, subscribe: str | None = None):
    client = make_client(_config(broker, client_id), persistent=False)
    ready = threading.Event()
    received: list[bytes] = []

    def on_connect(client, _userdata, _flags, _reason, _props):
        if subscribe:
            client.subscribe(subscribe, qos=1)
        else:
            ready.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: received.append(msg.payload)
    connect(client, _config(broker, client_id), persistent=False)
    assert ready.wait(10)
    return client, received


def _wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("qos", [0, 1])
def test_a_burst_in_one_write_is_read_whole_and_in_order(broker, qos):
    client, received = _connected(broker, f"buffered-rx-{qos}", f"burst/{qos}")
    sender = WireClient(_config(broker, f"burst-tx-{qos}"), lambda *_: None)
    try:
        payload = bytes(60)
        packets = [
            publish_packet(f"burst/{qos}", i.to_bytes(4, "big") + payload, qos, i + 1)
            for i in range(BURST)
        ]
        assert sum(map(len, packets)) > BURST_BYTES
        sender.send(b"".join(packets))
        assert _wait_for(lambda: len(received) >= BURST), f"{len(received)} of {BURST}"
        assert [int.from_bytes(p[:4], "big") for p in received] == list(range(BURST))
    finally:
        sender.close()
        client.disconnect()
        client.loop_stop()


def test_publishes_from_another_thread_are_all_sent_and_acknowledged(broker):
    inbox: list[bytes] = []
    receiver = WireClient(_config(broker, "coalesce-rx"), lambda _t, p, _r: inbox.append(p))
    receiver.subscribe(["coalesce/out"], 1)
    client, _ = _connected(broker, "coalesce-tx")
    try:
        infos = [client.publish("coalesce/out", str(i), qos=1) for i in range(BURST)]
        assert _wait_for(lambda: all(info.is_published() for info in infos))
        assert _wait_for(lambda: len(inbox) >= BURST), f"{len(inbox)} of {BURST}"
        assert [int(p) for p in inbox] == list(range(BURST))
    finally:
        client.disconnect()
        client.loop_stop()
        receiver.close()
