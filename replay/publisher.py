"""Publish samples to ``<prefix>/<id>/accel`` exactly as the service's contract reads them.

One message carries one chunk: a single sample as ``{"x", "y", "z", "t"}``; samples at a
regular rate as ``{"t0", "rate_hz", "samples": [[x, y, z], ...]}`` (or the binary form,
``--binary``); irregularly timed samples as ``{"samples": [[t, x, y, z], ...]}``. The
client comes from ``stream.connection`` (same flags as ``harstream serve``, TCP_NODELAY,
a raised in-flight window); ``Publisher`` keeps at most ``max_pending`` messages
unconfirmed, so ``--speed max`` runs as fast as the broker acknowledges, not faster.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harstream.replay.pacing import Chunk
from harstream.stream.connection import BrokerConfig, connect, make_client
from harstream.stream.contract import topic
from harstream.stream.families.har import BINARY_CONTENT_TYPE, MAX_SAMPLES, encode_binary
from harstream.stream.families.har_labels import LABEL_SUFFIX
from harstream.stream.payloads import encode_json
from harstream.stream.preflight import CHECK_TIMEOUT_S, BrokerError, check_broker

CONNECT_TIMEOUT_S = 10.0


class BrokerUnavailable(RuntimeError):
    """The broker did not accept the connection (or the subscription) in time."""


def check_samples_per_message(k: int) -> int:
    """``k`` if the service accepts that many samples in one message, else ValueError."""
    if not 1 <= k <= MAX_SAMPLES:
        raise ValueError(f"samples per message must be between 1 and {MAX_SAMPLES}, got {k}")
    return k


def encode_chunk(chunk: Chunk, *, binary: bool = False) -> bytes:
    """The accel payload for ``chunk`` (see the module docstring for the forms)."""
    if binary and chunk.regular:
        return encode_binary(chunk.xyz, chunk.rate_hz, float(chunk.t[0]))
    if chunk.t.size == 1:
        # float32 readings widened to float: 9.8 would go out as 9.800000190734863
        x, y, z = (round(float(v), 6) for v in chunk.xyz[0])
        return encode_json({"x": x, "y": y, "z": z, "t": float(chunk.t[0])})
    if chunk.regular:
        return encode_json(
            {"t0": float(chunk.t[0]), "rate_hz": chunk.rate_hz, "samples": chunk.xyz}
        )
    rows = np.column_stack([chunk.t, np.round(chunk.xyz.astype(np.float64), 6)])
    return encode_json({"samples": rows})


def open_client(
    cfg: BrokerConfig,
    *,
    subscriptions: Sequence[str] = (),
    on_message: Callable[[Any, Any, Any], None] | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Any:
    """A connected client (non-persistent session), subscribed at QoS 1 to ``subscriptions``.

    Returns once the broker acknowledged the connection and every subscription, so that
    nothing published afterwards can be missed; raises ``BrokerUnavailable`` otherwise,
    at once when the broker cannot be used (a tool should not wait like the service), with
    the cause the broker check names (:mod:`stream.preflight`).
    """
    try:
        check_broker(cfg, min(CHECK_TIMEOUT_S, timeout))
    except BrokerError as exc:
        raise BrokerUnavailable(f"cannot use the MQTT broker at {cfg.url}: {exc}") from None
    client = make_client(cfg, persistent=False)
    ready = threading.Event()
    failure: list[str] = []

    def on_connect(client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            failure.append(f"the broker refused the connection: {reason}")
            ready.set()
        elif subscriptions:
            client.subscribe([(s, 1) for s in subscriptions])
        else:
            ready.set()

    def on_subscribe(_client: Any, _userdata: Any, _mid: Any, reasons: Any, _props: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            failure.append(f"the broker refused the subscription: {', '.join(refused)}")
        ready.set()

    def on_connect_fail(_client: Any, _userdata: Any) -> None:
        failure.append("nothing accepted the connection; is the broker running?")
        ready.set()

    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_subscribe = on_subscribe
    if on_message is not None:
        client.on_message = on_message
    connect(client, cfg, persistent=False)
    if not ready.wait(timeout) or failure:
        close_client(client)
        reason = failure[0] if failure else f"no answer within {timeout:g} s"
        raise BrokerUnavailable(f"cannot use the MQTT broker at {cfg.url}: {reason}")
    return client


def close_client(client: Any) -> None:
    """Disconnect and stop the network thread."""
    client.disconnect()
    client.loop_stop()


class Publisher:
    """Publishes chunks with QoS ``qos``, keeping at most ``max_pending`` unconfirmed.

    ``lost`` counts QoS 0 messages paho could not send because the connection was down;
    ``queued_offline`` the QoS 1/2 ones paho keeps and sends after it reconnects.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        qos: int = 1,
        binary: bool = False,
        max_pending: int = 1000,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos}")
        self.client = client
        self.prefix = prefix
        self.qos = qos
        self.binary = binary
        self.max_pending = max_pending
        self.messages = 0
        self.samples = 0
        self.lost = 0
        self.queued_offline = 0
        self.labels = 0
        self._pending: deque[Any] = deque()
        self._properties = self._binary_properties(client) if binary else None

    @staticmethod
    def _binary_properties(client: Any) -> Any:
        """MQTT 5 content type for binary payloads (MQTT 3.1.1 has no properties)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if client.protocol != mqtt.MQTTv5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = BINARY_CONTENT_TYPE
        return props

    def send(self, chunk: Chunk, stop: threading.Event | None = None) -> bool:
        """Publish one chunk, first waiting while too many messages are unconfirmed.

        Returns False, without publishing, when ``stop`` was set during that wait.
        """
        import paho.mqtt.client as mqtt

        while len(self._pending) >= self.max_pending:
            if not self._wait_oldest(stop):
                return False
        payload = encode_chunk(chunk, binary=self.binary)
        props = self._properties if (self.binary and chunk.regular) else None
        info = self.client.publish(
            topic(self.prefix, chunk.device, "accel"), payload, self.qos, properties=props
        )
        self.messages += 1
        self.samples += chunk.t.size
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._pending.append(info)
        elif self.qos and info.rc == mqtt.MQTT_ERR_NO_CONN:
            self.queued_offline += 1  # paho sends it after reconnecting
        else:
            self.lost += 1
        return True

    def send_label(self, device: str, activity: str, start: float, end: float) -> None:
        """Publish a calibration label (the start/end form) at QoS 1 whatever ``qos``: a
        lost label would silently leave the device uncalibrated."""
        import paho.mqtt.client as mqtt

        payload = encode_json({"activity": activity, "start": float(start), "end": float(end)})
        info = self.client.publish(topic(self.prefix, device, LABEL_SUFFIX), payload, 1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:  # else paho sends it after reconnecting
            self._pending.append(info)
        self.labels += 1

    def _wait_oldest(self, stop: threading.Event | None) -> bool:
        """Wait for the oldest pending message; False if ``stop`` was set meanwhile."""
        info = self._pending[0]
        while not info.is_published():
            if stop is not None and stop.is_set():
                return False
            info.wait_for_publish(0.1)
        self._pending.popleft()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every message was confirmed (QoS 1/2) or written (QoS 0)."""
        deadline = time.monotonic() + timeout
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._pending[0].wait_for_publish(min(left, 0.1))
            if self._pending[0].is_published():
                self._pending.popleft()
        return True
