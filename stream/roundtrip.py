"""The service's round trip through its broker, measured at start (``--rtt-warn-ms``).

Every prediction crosses the broker twice (reading in, result out), so a broker that holds
small packets back adds its delay to answers. Stock Mosquitto does: without
``set_tcp_nodelay true`` it sends under Nagle's algorithm, which holds a small packet
while an earlier one on the connection is unacknowledged, and a client with nothing to
send back acknowledges only after its delayed-ACK timer (40 ms on Linux). The probe makes
that case: it publishes QoS 1 (the broker answers PUBACK, then forwards the message: two
packets) to a topic it subscribes to with QoS 0 (no MQTT answer, so no early TCP ACK).
Measured against Mosquitto 2.0.11 on loopback, 40 probes one after the other: without
``set_tcp_nodelay`` every second probe took 41-48 ms and the others 0.2 ms, after the
first few (Linux acknowledges at once at the start of a connection); with it every probe
took 0.1 ms. Hence the figure is the 90th percentile of :data:`SAMPLES` probes (the slow
half shows, up to two stray slow ones do not), and the default threshold, 20 ms, lies
between the two cases and above the round trip to a broker on a LAN (under 1 ms).

The probe topic is ``<prefix>/service/rtt/<client id>``, which only this service uses.
"""

from __future__ import annotations

import math
import queue
import re
import secrets
import time
from typing import Any

SAMPLES = 20
PROBE_QOS = 0  # the subscription's (see above); the probes themselves go QoS 1
# Longer than any broker worth serving from takes for one round trip; a probe not back by
# then (e.g. the broker's ACL denies the topic) ends the measurement.
TIMEOUT_S = 2.0


def probe_topic(prefix: str, client_id: str) -> str:
    """``<prefix>/service/rtt/<client id>``, the id made a single valid topic level."""
    return f"{prefix}/service/rtt/{re.sub(r'[^A-Za-z0-9_.-]', '_', client_id)[:64] or 'x'}"


class RoundTrip:
    """Publishes numbered probes to :attr:`topic` and times their return.

    :meth:`received` is called on the MQTT thread with each message on the topic;
    :meth:`measure` runs on another thread. Probes carry a random token, so that a probe
    of an earlier run, redelivered by the persistent session, is not timed.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._token = secrets.token_hex(4)
        self._arrived: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def received(self, payload: bytes) -> None:
        self._arrived.put((time.perf_counter(), payload))

    def measure(
        self, client: Any, samples: int = SAMPLES, timeout: float = TIMEOUT_S
    ) -> float | None:
        """The 90th percentile (nearest rank) of the round trips in seconds of ``samples``
        probes sent one after the other, or None when the first one did not come back
        within ``timeout``."""
        times = []
        for i in range(samples):
            expected = f"{self._token}:{i}".encode()
            start = time.perf_counter()
            client.publish(self.topic, expected, qos=1)
            deadline = start + timeout
            while True:
                try:
                    at, payload = self._arrived.get(
                        timeout=max(0.0, deadline - time.perf_counter())
                    )
                except queue.Empty:
                    return _p90(times) if times else None
                if payload == expected:
                    times.append(at - start)
                    break
        return _p90(times)


def _p90(times: list[float]) -> float:
    return sorted(times)[math.ceil(0.9 * len(times)) - 1]
