"""The dashboard's view of the bus: every device's latest answer, bounded history, the service.

The MQTT thread calls the ``on_*`` methods; the server's flusher calls :meth:`Board.delta`
a few times a second and sends the rows that changed since the previous call, so a page
gets one batch per flush however many predictions arrived (2,000 devices at one window a
second each are about 500 changed rows per 0.25 s flush, not 2,000 messages a second).

Memory is bounded per device: the detail timeline keeps at most ``history_s`` seconds
(and :data:`HISTORY_PER_S` points a second), the last :data:`ERRORS_PER_DEVICE` errors,
and a device that sent nothing for ``evict_after_s`` is dropped (also the least recently
seen once there are ``max_devices``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A device answers once per hop: 1 s at the default hop of 20 samples, 50 ms at hop 1.
# Four points a second keep the default's every window and cap a hop-1 device's timeline
# at 1,200 points for 5 minutes (about 100 KiB), whatever its rate.
HISTORY_PER_S = 4
ERRORS_PER_DEVICE = 10
LATENCY_WINDOW_S = 60.0  # latency percentiles cover the last minute
# 2,000 predictions a second for a minute: 120,000 (time, ms) pairs, about 10 MiB; above
# that rate the oldest go first and the percentiles cover less than a minute.
LATENCY_CAPACITY = 120_000
RATE_WINDOW_S = 10  # windows per second: averaged over the last 10 s
TEXT_KEPT = 50  # latest text classifications shown
SERIES_KEPT = 50  # series ids followed (least recently updated dropped)
SERIES_POINTS = 120  # values and forecasts per series
# Whoever may publish on the service's topics could send megabyte labels or endless error
# kinds: names are cut to 100 characters, messages to 300, and kinds and classes capped.
MAX_NAME = 100
MAX_MESSAGE = 300
MAX_TEXT = 500  # of a text message (the service takes up to 4,096 characters)
MAX_KINDS = 50  # error kinds counted separately (the contract has about 15); then "other"
MAX_CLASSES = 64


@dataclass
class Device:
    """One device's latest state and its bounded history."""

    id: str
    activity: str | None = None
    confidence: float | None = None
    raw: str | None = None
    raw_confidence: float | None = None
    calibrated: bool = False
    calibration: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    since: float | None = None  # wall time the current activity began
    seen: float | None = None  # wall time of the latest live (not retained) message
    device_time: float | None = None  # the device's clock at its latest window's end
    error_count: int = 0
    history: deque = field(default_factory=deque)  # (wall time, activity, raw, confidence)
    errors: deque = field(default_factory=lambda: deque(maxlen=ERRORS_PER_DEVICE))

    def row(self) -> dict[str, Any]:
        """The compact row a page renders in its grid."""
        return {
            "id": self.id,
            "a": self.activity,
            "c": self.confidence,
            "r": self.raw,
            "rc": self.raw_confidence,
            "cal": self.calibrated,
            "k": self.calibration,
            "since": self.since,
            "seen": self.seen,
            "e": self.error_count,
            "m": self.model,
        }


def _number(value: Any) -> float | None:
    """A finite number from a message, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any, limit: int = MAX_NAME) -> str | None:
    """A string from a message, cut to ``limit`` characters, else None."""
    return value[:limit] if isinstance(value, str) else None


class Board:
    """Thread-safe aggregate of everything the service publishes under one prefix."""

    def __init__(
        self,
        *,
        history_s: float = 300.0,
        evict_after_s: float = 600.0,
        max_devices: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history_s = history_s
        self.evict_after_s = evict_after_s
        self.max_devices = max_devices
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._devices: OrderedDict[str, Device] = OrderedDict()  # least recently seen first
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._classes: list[str] = []
        self._status: dict[str, Any] = {"status": "unknown"}
        self._broker_connected = False
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_CAPACITY)
        self._latency_at = float("-inf")
        self._latency_cache: dict[str, float] | None = None
        self._per_second: Counter[int] = Counter()
        self._errors: Counter[str] = Counter()
        self._texts: deque[dict[str, Any]] = deque(maxlen=TEXT_KEPT)
        self._pending_text: OrderedDict[str, str] = OrderedDict()
        self._series: OrderedDict[str, dict[str, deque]] = OrderedDict()
        self._others_changed = True

    # ------------------------------------------------------------------ input (MQTT thread)

    def _device(self, device_id: str, live: bool) -> Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = Device(device_id)
            self._removed.discard(device_id)
        if live:
            dev.seen = self.clock()
            self._devices.move_to_end(device_id)
        self._dirty.add(device_id)
        while len(self._devices) > self.max_devices:
            gone, _ = self._devices.popitem(last=False)
            self._forget(gone)
        return dev

    def _forget(self, device_id: str) -> None:
        self._dirty.discard(device_id)
        self._removed.add(device_id)

    def on_prediction(self, device_id: str, doc: dict[str, Any]) -> None:
        """A message of ``<prefix>/<id>/activity``."""
        activity = _text(doc.get("activity"))
        if activity is None:
            return
        now = self.clock()
        raw = doc.get("raw") if isinstance(doc.get("raw"), dict) else {}
        with self._lock:
            dev = self._device(device_id, live=True)
            if activity != dev.activity:
                dev.since = now
            dev.activity = activity
            dev.confidence = _number(doc.get("confidence"))
            dev.raw = _text(raw.get("activity"))
            dev.raw_confidence = _number(raw.get("confidence"))
            dev.calibrated = doc.get("calibrated") is True
            dev.model = _text(doc.get("model")) or dev.model
            window = doc.get("window") if isinstance(doc.get("window"), dict) else {}
            dev.device_time = _number(window.get("end"))
            history = dev.history
            if not history or now - history[-1][0] >= 1.0 / HISTORY_PER_S:
                history.append((now, activity, dev.raw, dev.confidence))
            while history and history[0][0] < now - self.history_s:
                history.popleft()
            probs = doc.get("probs")
            if isinstance(probs, dict) and list(probs)[:MAX_CLASSES] != self._classes:
                self._classes = [str(k)[:MAX_NAME] for k in probs][:MAX_CLASSES]
                self._others_changed = True
            latency = _number(doc.get("latency_ms"))
            if latency is not None:
                self._latencies.append((now, latency))
            self._per_second[int(now)] += 1

    def on_state(self, device_id: str, doc: dict[str, Any], live: bool) -> None:
        """A (retained) message of ``<prefix>/<id>/state``: the smoothed activity changed."""
        activity = _text(doc.get("activity"))
        if activity is None:
            return
        with self._lock:
            dev = self._device(device_id, live=live)
            since = _number(doc.get("since"))
            # ``since`` is on the device's clock: place it on ours through the latest window
            # end (same clock) when there is one; a live change without it is taken as now,
            # and a retained one (from before the dashboard started) leaves it unknown.
            if dev.device_time is not None and since is not None:
                dev.since = self.clock() - max(0.0, dev.device_time - since)
            elif live:
                dev.since = self.clock()
            if dev.activity is None:
                dev.activity = activity
                dev.confidence = _number(doc.get("confidence"))
                dev.model = _text(doc.get("model"))

    def on_calibration(self, device_id: str, doc: dict[str, Any], live: bool) -> None:
        """A (retained) message of ``<prefix>/<id>/calibration``."""
        classes = doc.get("classes")
        if not isinstance(classes, dict):
            return
        with self._lock:
            dev = self._device(device_id, live=live)
            dev.calibration = {
                str(k): int(n) for k, v in classes.items() if (n := _number(v)) is not None
            }

    def on_error(self, device_id: str | None, doc: dict[str, Any]) -> None:
        """A message of ``<prefix>/<id>/errors``; ``None`` for ``<prefix>/_invalid/errors``
        (a message whose id was refused: counted by kind, no device to show it on)."""
        kind = _text(doc.get("error")) or "unknown"
        now = self.clock()
        with self._lock:
            if kind not in self._errors and len(self._errors) >= MAX_KINDS:
                kind = "other"
            self._errors[kind] += 1
            if device_id is None:
                return
            dev = self._device(device_id, live=True)
            dev.error_count += 1
            message = _text(doc.get("message"), MAX_MESSAGE) or ""
            dev.errors.append({"t": now, "kind": kind, "message": message})

    def on_status(self, doc: dict[str, Any]) -> None:
        """The retained ``<prefix>/service/status``."""
        models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
        with self._lock:
            self._status = {
                "status": _text(doc.get("status")) or "unknown",
                "models": {
                    str(k)[:MAX_NAME]: str(v)[:MAX_NAME]
                    for k, v in list(models.items())[:MAX_CLASSES]
                },
                "client_id": _text(doc.get("client_id")),
                "time": _number(doc.get("time")),
            }

    def on_broker(self, connected: bool) -> None:
        """The dashboard's own connection to the broker came or went."""
        with self._lock:
            self._broker_connected = connected

    def on_text(self, device_id: str, text: str) -> None:
        """A message on ``<prefix>/<id>/text``, kept until its classification arrives."""
        with self._lock:
            self._pending_text[device_id] = text[:MAX_TEXT]
            self._pending_text.move_to_end(device_id)
            while len(self._pending_text) > TEXT_KEPT:
                self._pending_text.popitem(last=False)

    def on_text_class(self, device_id: str, doc: dict[str, Any]) -> None:
        """A message on ``<prefix>/<id>/text/class``."""
        with self._lock:
            self._texts.appendleft(
                {
                    "id": device_id,
                    "text": self._pending_text.pop(device_id, None),
                    "label": _text(doc.get("label")),
                    "confidence": _number(doc.get("confidence")),
                    "model": _text(doc.get("model")),
                    "t": self.clock(),
                }
            )
            self._others_changed = True

    def _series_of(self, series_id: str) -> dict[str, deque]:
        entry = self._series.get(series_id)
        if entry is None:
            entry = self._series[series_id] = {
                "values": deque(maxlen=SERIES_POINTS),
                "forecasts": deque(maxlen=SERIES_POINTS),
            }
        self._series.move_to_end(series_id)
        while len(self._series) > SERIES_KEPT:
            self._series.popitem(last=False)
        self._others_changed = True
        return entry

    def on_series(self, series_id: str, values: list[float]) -> None:
        """Values sent on ``<prefix>/<id>/series``: they get sequence numbers 1, 2, ... as
        the service counts them, so that a forecast's ``after.seq`` places it."""
        with self._lock:
            entry = self._series_of(series_id)
            seq = entry["values"][-1][0] if entry["values"] else 0
            for i, value in enumerate(values, 1):
                entry["values"].append((seq + i, value))

    def on_forecast(self, series_id: str, doc: dict[str, Any]) -> None:
        """A message on ``<prefix>/<id>/series/forecast``."""
        forecast = _number(doc.get("forecast"))
        after = doc.get("after") if isinstance(doc.get("after"), dict) else {}
        seq = _number(after.get("seq"))
        horizon = _number(doc.get("horizon")) or 1.0
        if forecast is None or seq is None:
            return
        with self._lock:
            entry = self._series_of(series_id)
            entry["forecasts"].append((seq + horizon, forecast))
            values = entry["values"]
            if values and values[-1][0] != seq:
                # the values' own count drifted (the dashboard started late): follow the service's
                entry["values"] = deque(
                    ((s - values[-1][0] + seq, v) for s, v in values), maxlen=SERIES_POINTS
                )

    # ------------------------------------------------------------------ output (server)

    def _latency(self, now: float) -> dict[str, float] | None:
        """Percentiles of the last minute's latencies, computed at most once a second (at
        120,000 values about 10 ms: every delta would spend 4% of a core on it)."""
        if now - self._latency_at < 1.0:
            return self._latency_cache
        self._latency_at = now
        while self._latencies and self._latencies[0][0] < now - LATENCY_WINDOW_S:
            self._latencies.popleft()
        self._latency_cache = None
        if self._latencies:
            values = np.fromiter((ms for _, ms in self._latencies), float, len(self._latencies))
            p50, p95, p99 = np.percentile(values, [50, 95, 99])
            self._latency_cache = {"p50": p50, "p95": p95, "p99": p99, "n": int(values.size)}
        return self._latency_cache

    def _service(self) -> dict[str, Any]:
        now = self.clock()
        latency = self._latency(now)
        second = int(now)
        for old in [s for s in self._per_second if s < second - RATE_WINDOW_S]:
            del self._per_second[old]
        full = sum(n for s, n in self._per_second.items() if s < second)
        span = min(RATE_WINDOW_S, max(1.0, now - self.started))
        return {
            **self._status,
            "broker": self._broker_connected,
            "windows_per_s": full / span,
            "latency_ms": latency,
            "errors": dict(self._errors),
            "devices": len(self._devices),
        }

    def _others(self) -> dict[str, Any]:
        return {
            "classes": self._classes,
            "texts": list(self._texts),
            "series": {
                sid: {"values": list(e["values"]), "forecasts": list(e["forecasts"])}
                for sid, e in self._series.items()
            },
        }

    def _evict(self) -> None:
        cutoff = self.clock() - self.evict_after_s
        for device_id in list(self._devices):
            dev = self._devices[device_id]
            if (dev.seen if dev.seen is not None else self.started) < cutoff:
                del self._devices[device_id]
                self._forget(device_id)

    def snapshot(self) -> dict[str, Any]:
        """Everything a newly opened page needs."""
        with self._lock:
            return {
                "type": "snapshot",
                "now": self.clock(),
                "service": self._service(),
                "rows": [dev.row() for dev in self._devices.values()],
                **self._others(),
            }

    def delta(self) -> dict[str, Any]:
        """The rows changed since the previous delta, removed ids, the service summary, and
        text and series when they changed."""
        with self._lock:
            self._evict()
            doc: dict[str, Any] = {
                "type": "delta",
                "now": self.clock(),
                "service": self._service(),
                "rows": [self._devices[d].row() for d in self._dirty if d in self._devices],
                "removed": sorted(self._removed),
            }
            if self._others_changed:
                doc.update(self._others())
            self._dirty.clear()
            self._removed.clear()
            self._others_changed = False
            return doc

    def detail(self, device_id: str) -> dict[str, Any] | None:
        """One device's timeline and recent errors, for its detail view."""
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                return None
            return {
                "row": dev.row(),
                "now": self.clock(),
                "history": [list(point) for point in dev.history],
                "errors": list(dev.errors),
                "history_s": self.history_s,
            }

    def classes(self) -> list[str]:
        with self._lock:
            return list(self._classes)
