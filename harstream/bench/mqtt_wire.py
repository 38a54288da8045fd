"""A lean MQTT 3.1.1 client for the load generator, so that the load costs the machine little.

``bench e2e`` runs the load generator on the same cores as the broker and the service it
measures, so every microsecond the generator spends per message is taken from the system
under test. paho, a general client, costs about 100 µs of Python per message each way
(measured here: the generator used 45% of a core for 1,500 messages/s in and out). This
client does only what a simulated device needs, and does it in bulk:

- PUBLISH packets are encoded before the timed stream starts, and every packet that is
  due is written with a single ``sendall``;
- one ``recv`` takes up to 64 KiB and every packet in it is parsed at once; the QoS 1
  acknowledgements it owes go back in one write.

It speaks MQTT 3.1.1 with a clean session, plain TCP (TCP_NODELAY) or TLS, with optional
user name and password: what the bench's brokers and the service's contract need, no more.
The service itself keeps using paho (reconnects, persistent sessions, MQTT 5).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from harstream.stream.connection import tls_context

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = 0x82, 0x90, 0xC0, 0xE0
KEEPALIVE_S = 60
READ_CHUNK = 65536
FILTERS_PER_SUBSCRIBE = 200
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

OnPublish = Callable[[str, bytes, float], None]


def _length(n: int) -> bytes:
    """MQTT's variable-length "remaining length" encoding."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _length(len(body)) + body


def connect_packet(
    client_id: str, *, username: str | None = None, password: str | None = None
) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, ``KEEPALIVE_S``."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S) + _text(client_id)
    body += (_text(username) if username else b"") + (_text(password) if password else b"")
    return _packet(CONNECT, body)


def subscribe_packet(mid: int, filters: Iterable[str], qos: int) -> bytes:
    """One SUBSCRIBE for several topic filters at the same QoS."""
    body = struct.pack("!H", mid) + b"".join(_text(f) + bytes([qos]) for f in filters)
    return _packet(SUBSCRIBE, body)


def publish_packet(topic: str, payload: bytes, qos: int, mid: int = 0) -> bytes:
    """PUBLISH at QoS 0 or 1 (``mid`` is the packet id, 1-65535, used at QoS 1)."""
    if qos not in (0, 1):
        raise ValueError(f"QoS must be 0 or 1, got {qos}")
    header = _text(topic) + (struct.pack("!H", mid) if qos else b"")
    return _packet(PUBLISH | (qos << 1), header + payload)


class PacketReader:
    """Splits a byte stream into ``(first byte, body)`` packets, across read boundaries."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        packets, pos, end = [], 0, len(buf)
        while pos + 2 <= end:
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end:
                    self._buf = buf[pos:]
                    return packets
                digit = buf[i]
                length += (digit & 0x7F) * mult
                mult *= 128
                i += 1
                if not digit & 0x80:
                    break
                if mult > 128**3:
                    raise ConnectionError("malformed MQTT packet length from the broker")
            if i + length > end:
                break
            packets.append((buf[pos], buf[i : i + length]))
            pos = i + length
        self._buf = buf[pos:]
        return packets


class WireClient:
    """A connected MQTT 3.1.1 client: ``send`` raw packets, receive PUBLISHes by callback.

    ``cfg`` is a ``stream.connection.BrokerConfig``. Incoming PUBLISHes reach
    ``on_publish(topic, payload, perf_counter time of the read)`` on a reader thread.
    """

    def __init__(self, cfg: Any, on_publish: OnPublish, *, timeout: float = 10.0) -> None:
        self.on_publish = on_publish
        self.acked = 0  # PUBACKs received for our QoS 1 publishes
        self._send_lock = threading.Lock()
        self._subacks: dict[int, bytes] = {}
        self._suback_ready = threading.Condition()
        self._reader = PacketReader()
        self._closing = False
        self._last_send = time.monotonic()
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the MQTT broker at {cfg.url}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cfg.tls:
            sock = tls_context(cfg).wrap_socket(sock, server_hostname=cfg.host)
        self._sock = sock
        sock.sendall(connect_packet(cfg.client_id, username=cfg.username, password=cfg.password))
        self._check_connack(cfg.url)
        sock.settimeout(1.0)  # the reader wakes up to send keepalive pings
        self._thread = threading.Thread(target=self._read_loop, name="mqtt-wire", daemon=True)
        self._thread.start()

    def _check_connack(self, url: str) -> None:
        packets: list[tuple[int, bytes]] = []
        while not packets:
            data = self._sock.recv(READ_CHUNK)
            if not data:
                raise ConnectionError(f"the MQTT broker at {url} closed the connection")
            packets = self._reader.feed(data)
        kind, body = packets[0]
        if kind & 0xF0 != CONNACK or len(body) < 2:
            raise ConnectionError(f"the MQTT broker at {url} did not answer CONNECT")
        if body[1]:
            reason = CONNACK_REASONS.get(body[1], f"code {body[1]}")
            raise ConnectionError(f"the MQTT broker at {url} refused the connection: {reason}")
        self._dispatch(packets[1:])

    def subscribe(self, filters: list[str], qos: int, *, timeout: float = 10.0) -> None:
        """Subscribe to every filter and return once the broker granted all of them."""
        chunks = [
            filters[i : i + FILTERS_PER_SUBSCRIBE]
            for i in range(0, len(filters), FILTERS_PER_SUBSCRIBE)
        ]
        mids = list(range(1, len(chunks) + 1))
        self.send(b"".join(subscribe_packet(m, c, qos) for m, c in zip(mids, chunks, strict=True)))
        deadline = time.monotonic() + timeout
        with self._suback_ready:
            while not all(m in self._subacks for m in mids):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no SUBACK for {len(filters)} filters in {timeout:g} s")
                self._suback_ready.wait(left)
        if any(0x80 in self._subacks[m] for m in mids):
            raise ConnectionError("the broker refused a subscription")

    def send(self, data: bytes) -> None:
        """Write ready-made packets; safe from any thread."""
        with self._send_lock:
            self._sock.sendall(data)
            self._last_send = time.monotonic()

    def close(self) -> None:
        """Say DISCONNECT and stop the reader."""
        self._closing = True
        with contextlib.suppress(OSError):
            self.send(bytes([DISCONNECT, 0]))
        self._thread.join(5.0)
        self._sock.close()

    def _read_loop(self) -> None:
        while not self._closing:
            try:
                data = self._sock.recv(READ_CHUNK)
            except TimeoutError:
                if time.monotonic() - self._last_send > KEEPALIVE_S / 2:
                    self.send(bytes([PINGREQ, 0]))
                continue
            except OSError:
                return
            if not data:
                return
            self._dispatch(self._reader.feed(data), time.perf_counter())

    def _dispatch(self, packets: list[tuple[int, bytes]], now: float = 0.0) -> None:
        acks = []
        for first, body in packets:
            kind = first & 0xF0
            if kind == PUBLISH:
                qos = (first >> 1) & 0x03
                n = struct.unpack_from("!H", body)[0]
                topic = body[2 : 2 + n].decode()
                start = 2 + n + (2 if qos else 0)
                if qos:
                    acks.append(bytes([PUBACK, 2]) + body[2 + n : start])
                self.on_publish(topic, body[start:], now)
            elif kind == PUBACK:
                self.acked += 1
            elif kind == SUBACK:
                with self._suback_ready:
                    self._subacks[struct.unpack_from("!H", body)[0]] = body[2:]
                    self._suback_ready.notify_all()
        if acks:
            self.send(b"".join(acks))
