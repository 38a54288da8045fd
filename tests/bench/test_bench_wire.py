"""The load generator's lean MQTT client: framing, and talking to a real broker."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from harstream.bench.mqtt_wire import PacketReader, WireClient, publish_packet
from harstream.stream.connection import BrokerConfig


def _config(broker, client_id: str) -> BrokerConfig:
    return BrokerConfig(host=broker.host, port=broker.port, client_id=client_id)


def test_packets_split_anywhere_are_reassembled():
    payloads = [b"", b"x", bytes(200), bytes(20_000)]  # 1-, 2- and 3-byte lengths
    stream = b"".join(publish_packet("a/b", p, 1, mid=i + 1) for i, p in enumerate(payloads))
    for cut in (1, 2, 3, 7, 130, 4096):
        reader = PacketReader()
        packets = []
        for i in range(0, len(stream), cut):
            packets += reader.feed(stream[i : i + cut])
        assert [first for first, _ in packets] == [0x32] * len(payloads)
        assert [len(body) - 2 - 3 - 2 for _, body in packets] == [len(p) for p in payloads]


def test_publish_packet_rejects_qos_2():
    with pytest.raises(ValueError, match="QoS"):
        publish_packet("a", b"", 2)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.event = threading.Event()
        self.expected = 0

    def __call__(self, topic: str, payload: bytes, _received: float) -> None:
        self.messages.append((topic, payload))
        if len(self.messages) >= self.expected:
            self.event.set()


@pytest.mark.parametrize("qos", [0, 1])
def test_batched_publishes_arrive_in_order(broker, qos):
    inbox = _Inbox()
    inbox.expected = 500
    receiver = WireClient(_config(broker, f"wire-rx-{qos}"), inbox)
    sender = WireClient(_config(broker, f"wire-tx-{qos}"), lambda *_: None)
    try:
        receiver.subscribe([f"wire/{qos}/+/data"], qos)
        packets = [
            publish_packet(f"wire/{qos}/d{i % 7}/data", str(i).encode(), qos, i + 1)
            for i in range(500)
        ]
        sender.send(b"".join(packets))  # one write, many packets per read on the other side
        assert inbox.event.wait(10), f"received {len(inbox.messages)} of 500"
        assert [int(p) for _, p in inbox.messages] == list(range(500))
        assert inbox.messages[3][0] == f"wire/{qos}/d3/data"
        deadline = time.monotonic() + 5
        while qos and sender.acked < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.acked == (500 if qos else 0)
    finally:
        sender.close()
        receiver.close()


def test_unreachable_broker_is_a_clear_error(broker):
    cfg = replace(_config(broker, "wire-nobody"), port=1)
    with pytest.raises(ConnectionError, match="cannot reach the MQTT broker at mqtt://"):
        WireClient(cfg, lambda *_: None, timeout=2)
