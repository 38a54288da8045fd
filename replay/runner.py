"""One replay/simulation run: connect, publish paced streams, collect and score predictions.

``harstream replay``, ``simulate`` and ``demo`` differ only in where their streams come
from and how they show progress; the run itself (connection, pacing, publishing, truth
bookkeeping, waiting for the last predictions, the report) is this one class.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from harstream.replay.compare import Scoreboard, TruthLog, WindowCounter
from harstream.replay.pacing import Chunk, paced
from harstream.replay.publisher import Publisher, close_client, open_client
from harstream.stream.config import ServeConfig
from harstream.stream.connection import BrokerConfig
from harstream.stream.contract import DEFAULT_PREFIX, ERRORS_SUFFIX, subscription
from harstream.stream.families.har_labels import CALIBRATION_SUFFIX


@dataclass
class RunSettings:
    """How to publish and whether to score. ``duration``: stop publishing after that many
    wall-clock seconds; ``wait``: after publishing, wait this long without a new
    prediction before giving up on the rest; ``truth_capacity``: samples remembered per
    device for scoring (``None``: all)."""

    prefix: str = DEFAULT_PREFIX
    qos: int = 1
    binary: bool = False
    speed: float = 1.0
    duration: float | None = None
    compare: bool = False
    hop: int = ServeConfig.hop  # the service's settings, to count the windows it will cut
    max_gap: float = ServeConfig.max_gap
    wait: float = 5.0
    truth_capacity: int | None = None
    calibrate_seconds: float | None = None  # labels are sent; scored as evaluate does


class Runner:
    """Use as a context manager: connects on enter, disconnects on exit."""

    def __init__(self, cfg: BrokerConfig, settings: RunSettings, devices: Iterable[str]) -> None:
        self.cfg = cfg
        self.settings = settings
        self.devices = set(devices)
        self.stop = threading.Event()
        self.interrupted = False
        self.truth = TruthLog(settings.truth_capacity)
        self.scoreboard = Scoreboard(
            self.truth, self.devices, calibrate_seconds=settings.calibrate_seconds
        )
        # each device's latest retained <prefix>/<id>/calibration: {activity: windows}
        self.calibrations: dict[str, dict[str, int]] = {}
        self.on_calibration: Callable[[str, dict[str, int]], None] | None = None
        self.counters = {
            d: WindowCounter(hop=settings.hop, max_gap=settings.max_gap) for d in self.devices
        }
        # the service's errors about this run's devices, by kind (e.g. rate_limited when a
        # replay runs faster than its --device-rate-margin allows), counted with --compare
        self.service_errors: Counter[str] = Counter()
        self.client: Any = None
        self.publisher: Publisher | None = None
        self.started = 0.0
        self.publish_seconds = 0.0

    def __enter__(self) -> Runner:
        prefix = self.settings.prefix
        subscriptions = []
        if self.settings.compare:
            subscriptions += [subscription(prefix, "activity"), subscription(prefix, ERRORS_SUFFIX)]
        if self.settings.compare or self.settings.calibrate_seconds is not None:
            subscriptions.append(subscription(prefix, CALIBRATION_SUFFIX))
        self.client = open_client(
            self.cfg,
            subscriptions=subscriptions,
            on_message=self._on_message,
        )
        self.publisher = Publisher(
            self.client,
            prefix=self.settings.prefix,
            qos=self.settings.qos,
            binary=self.settings.binary,
            max_pending=self.cfg.max_inflight,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.client is not None:
            close_client(self.client)
            self.client = None

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic.endswith("/" + ERRORS_SUFFIX):
            self._on_error(msg.payload)
        elif msg.topic.endswith("/" + CALIBRATION_SUFFIX):
            if not msg.retain:  # retained: an earlier run's, delivered on subscribing
                self._on_calibration(msg.payload)
        else:
            self.scoreboard.on_prediction(msg.payload, time.perf_counter())

    def _on_error(self, payload: bytes) -> None:
        try:
            error = orjson.loads(payload)
            device, kind = error["device"], str(error["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if device in self.devices:
            self.service_errors[kind] += 1

    def _on_calibration(self, payload: bytes) -> None:
        try:
            doc = orjson.loads(payload)
            device, classes = (
                str(doc["device"]),
                {str(k): int(v) for k, v in doc["classes"].items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return
        if device in self.devices:
            self.calibrations[device] = classes
            if self.on_calibration is not None:
                self.on_calibration(device, classes)

    def publish(
        self, streams: Iterable[Iterator[Chunk]], progress: Callable[[int], None] | None = None
    ) -> None:
        """Publish every stream's chunks at the configured speed until done, ``duration``
        elapsed, ``stop`` was set or Ctrl-C (which ends publishing cleanly)."""
        assert self.publisher is not None, "use Runner as a context manager"
        timer = None
        if self.settings.duration is not None:
            timer = threading.Timer(self.settings.duration, self.stop.set)
            timer.daemon = True
            timer.start()
        self.started = time.monotonic()
        try:
            for chunk in paced(streams, self.settings.speed, self.stop):
                if self.settings.compare:  # before publishing: the answer may come at once
                    self.truth.record(chunk, time.perf_counter())
                if not self.publisher.send(chunk, self.stop):
                    break
                for activity, start, end in chunk.labels_after:
                    self.publisher.send_label(chunk.device, activity, start, end)
                if self.settings.compare:
                    self.counters[chunk.device].add(chunk.t)
                if progress is not None:
                    progress(chunk.t.size)
            self.publisher.flush()
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.set()
        finally:
            if timer is not None:
                timer.cancel()
            self.publish_seconds = time.monotonic() - self.started

    @property
    def windows_expected(self) -> int:
        return sum(c.expected for c in self.counters.values())

    def wait_for_predictions(self, progress: Callable[[], None] | None = None) -> None:
        """Wait until every expected window was received, or none came for ``wait`` s
        (not at all after Ctrl-C)."""
        if not self.settings.compare or self.interrupted:
            return
        last_count, last_change = -1, time.monotonic()
        try:
            while self.scoreboard.received < self.windows_expected:
                count = self.scoreboard.received
                if count != last_count:
                    last_count, last_change = count, time.monotonic()
                elif time.monotonic() - last_change > self.settings.wait:
                    return
                if progress is not None:
                    progress()
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.interrupted = True

    def report(self, **extra: Any) -> dict[str, Any]:
        """The scoreboard's report plus what was published."""
        pub = self.publisher
        seconds = self.publish_seconds
        return self.scoreboard.report(
            self.windows_expected,
            devices=len(self.devices),
            samples_sent=pub.samples if pub else 0,
            messages_sent=pub.messages if pub else 0,
            messages_lost=pub.lost if pub else 0,
            publish_seconds=round(seconds, 3),
            samples_per_second=round(pub.samples / seconds, 1) if pub and seconds else None,
            speed="max" if math.isinf(self.settings.speed) else self.settings.speed,
            service_errors=dict(self.service_errors),
            **(
                {}
                if self.settings.calibrate_seconds is None
                else {"labels_sent": pub.labels if pub else 0, "calibrations": self.calibrations}
            ),
            interrupted=self.interrupted,
            **extra,
        )
