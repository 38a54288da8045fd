"""The dashboard's MQTT side: subscribe to what the service publishes, fold it into a Board.

A clean session (nothing queues for the dashboard while it is away: the retained status,
states and calibrations give a fresh start the current picture) at QoS 0, on the stock
paho client of ``stream.connection``. Accelerometer input is never subscribed: at 2,000
devices it is tens of thousands of messages a second the page has no use for. Text and
series input is, since a classification or forecast does not repeat what it answers.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from harstream.dashboard.board import Board
from harstream.stream.connection import BrokerConfig, connect, make_client
from harstream.stream.contract import (
    ERRORS_SUFFIX,
    INVALID_ID_PLACEHOLDER,
    STATUS_TOPIC_SUFFIX,
    is_valid_id,
    status_topic,
    subscription,
    topic,
)
from harstream.stream.families.har import STATE_SUFFIX
from harstream.stream.families.har_labels import CALIBRATION_SUFFIX, LABEL_SUFFIX

log = logging.getLogger(__name__)

# The service's topics per docs/contract.md (suffix after <prefix>/<id>/).
ACTIVITY = "activity"
TEXT_IN, TEXT_OUT = "text", "text/class"
SERIES_IN, SERIES_OUT = "series", "series/forecast"
SUFFIXES = (
    ACTIVITY,
    STATE_SUFFIX,
    CALIBRATION_SUFFIX,
    ERRORS_SUFFIX,
    TEXT_IN,
    TEXT_OUT,
    SERIES_IN,
    SERIES_OUT,
)
MAX_SERIES_VALUES = 4096  # the service's own limit for one series message


def _json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _series_values(payload: bytes) -> list[float]:
    doc = _json(payload)
    if isinstance(doc, dict):
        doc = doc.get("values", [doc.get("value")])
    values = doc if isinstance(doc, list) else [doc]
    return [
        float(v)
        for v in values[:MAX_SERIES_VALUES]
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def _text_message(payload: bytes) -> str | None:
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        doc = _json(payload)
        text = doc.get("text") if isinstance(doc, dict) else None
        return text if isinstance(text, str) else None
    return text


class Feed:
    """Subscribes under ``prefix`` and keeps ``board`` current; ``publish`` for actions."""

    def __init__(self, cfg: BrokerConfig, prefix: str, board: Board) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.board = board
        self.connected = threading.Event()
        self._prefix_slash = prefix + "/"
        self._status_topic = status_topic(prefix)
        self._client = make_client(cfg, persistent=False)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        # set once the broker acknowledged the subscriptions: from then on nothing is missed
        self._client.on_subscribe = lambda *_args: self.connected.set()

    def start(self) -> Feed:
        connect(self._client, self.cfg, persistent=False)
        return self

    def stop(self) -> None:
        self.connected.clear()  # a disconnect asked for is not a lost broker
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, device_id: str, suffix: str, doc: dict[str, Any]) -> None:
        """Publish ``doc`` to ``<prefix>/<id>/<suffix>`` (the page's actions)."""
        self._client.publish(topic(self.prefix, device_id, suffix), orjson.dumps(doc), qos=1)

    def label(self, device_id: str, doc: dict[str, Any]) -> None:
        self.publish(device_id, LABEL_SUFFIX, doc)

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, *_: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the dashboard: %s", reason)
            return
        subs = [(subscription(self.prefix, s), 0) for s in SUFFIXES]
        client.subscribe([*subs, (self._status_topic, 0)])
        self.board.on_broker(True)
        log.info("event=dashboard_connected broker=%s prefix=%s", self.cfg.url, self.prefix)

    def _on_disconnect(self, *_args: Any) -> None:
        if self.connected.is_set():  # once per loss, not once per failed reconnect
            log.warning(
                "event=dashboard_broker_lost broker=%s: the page shows 'broker unreachable' "
                "until paho reconnects",
                self.cfg.url,
            )
        self.connected.clear()
        self.board.on_broker(False)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        try:
            self._handle(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # a hostile message must not end paho's thread
            log.exception("dashboard could not handle a message on %r", msg.topic[:200])

    def _handle(self, name: str, payload: bytes, retained: bool) -> None:
        if not name.startswith(self._prefix_slash):
            return
        device, _, suffix = name[len(self._prefix_slash) :].partition("/")
        if f"{device}/{suffix}" == STATUS_TOPIC_SUFFIX:
            doc = _json(payload)
            if isinstance(doc, dict):
                self.board.on_status(doc)
            return
        if not is_valid_id(device):
            if device == INVALID_ID_PLACEHOLDER and suffix == ERRORS_SUFFIX:
                doc = _json(payload)
                if isinstance(doc, dict):
                    self.board.on_error(None, doc)
            return
        if suffix == TEXT_IN:
            text = _text_message(payload)
            if text is not None:
                self.board.on_text(device, text)
            return
        if suffix == SERIES_IN:
            self.board.on_series(device, _series_values(payload))
            return
        doc = _json(payload)
        if not isinstance(doc, dict):
            return
        board = self.board
        if suffix == ACTIVITY:
            board.on_prediction(device, doc)
        elif suffix == STATE_SUFFIX:
            board.on_state(device, doc, live=not retained)
        elif suffix == CALIBRATION_SUFFIX:
            board.on_calibration(device, doc, live=not retained)
        elif suffix == ERRORS_SUFFIX:
            board.on_error(device, doc)
        elif suffix == TEXT_OUT:
            board.on_text_class(device, doc)
        elif suffix == SERIES_OUT:
            board.on_forecast(device, doc)
