"""Score the service's live predictions against the true labels of what was sent.

Every prediction carries ``window.start`` and ``window.end``: the timestamps of the first
and last sample of its window as the device sent them. ``TruthLog`` remembers, per device,
each sample's sent timestamp, true label and when it was published, so a prediction is
matched to the majority label of the samples it covered and its end-to-end latency is the
time from publishing the window's last sample to receiving the prediction. ``WindowCounter``
predicts how many windows the service must produce (windows expected), and ``Scoreboard``
collects the predictions (windows received) into the final report.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from harstream.models.har.wearer import SCORE_FROM_S, scored_after_labels
from harstream.models.har.windows import MAX_GAP_S, WINDOW
from harstream.models.reports import classification_report
from harstream.models.reports import format_report as format_scores
from harstream.replay.pacing import Chunk
from harstream.stream.config import ServeConfig
from harstream.stream.families.har import DEFAULT_RATE_HZ

MATCH_TOLERANCE_S = 1e-3  # the service may recompute t0 + i / rate_hz with rounding


class _DeviceLog:
    """Growable (or bounded) arrays of sent timestamps, label codes, publish times and the
    timestamp at which each sample's activity began (``since``)."""

    ARRAYS = ("t", "code", "sent", "since")

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        size = 1024 if capacity is None else min(capacity, 1024)
        self.t = np.empty(size)
        self.code = np.empty(size, np.int32)
        self.sent = np.empty(size)
        self.since = np.empty(size)
        self.n = 0
        self.first: float | None = None  # the first timestamp sent, kept when trimming
        self._last: tuple[float, int, float] | None = None  # t, code, since of the latest

    def _since(self, t: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """When each sample's activity began: a new one at a label change or a time gap,
        as the offline evaluation cuts activities (``models.har.windows.segments``)."""
        prev_t = np.concatenate([[-math.inf if self._last is None else self._last[0]], t[:-1]])
        prev_code = np.concatenate([[-2 if self._last is None else self._last[1]], codes[:-1]])
        step = t - prev_t
        breaks = (codes != prev_code) | (step < 0) | (step > MAX_GAP_S)
        starts = np.where(breaks, t, np.nan)
        if self._last is not None and not breaks[0]:
            starts[0] = self._last[2]
        index = np.maximum.accumulate(np.where(np.isnan(starts), 0, np.arange(t.size)))
        return starts[index]

    def append(self, t: np.ndarray, codes: np.ndarray, sent_at: float) -> None:
        k = t.size
        if k == 0:
            return
        if self.first is None:
            self.first = float(t[0])
        since = self._since(t, codes)
        self._last = (float(t[-1]), int(codes[-1]), float(since[-1]))
        if self.capacity is not None and self.n + k > 2 * self.capacity:
            keep = max(0, min(self.n, self.capacity - k))  # forget the oldest samples
            for name in self.ARRAYS:
                arr = getattr(self, name)
                arr[:keep] = arr[self.n - keep : self.n]
            self.n = keep
        if self.n + k > self.t.size:
            size = max(2 * self.t.size, self.n + k)
            for name in self.ARRAYS:
                grown = np.empty(size, getattr(self, name).dtype)
                grown[: self.n] = getattr(self, name)[: self.n]
                setattr(self, name, grown)
        self.t[self.n : self.n + k] = t
        self.code[self.n : self.n + k] = codes
        self.sent[self.n : self.n + k] = sent_at
        self.since[self.n : self.n + k] = since
        self.n += k

    def span(self, start: float, end: float) -> slice:
        """Indices of samples sent with ``start <= t <= end`` (timestamps ascend)."""
        t = self.t[: self.n]
        lo = int(np.searchsorted(t, start - MATCH_TOLERANCE_S, "left"))
        hi = int(np.searchsorted(t, end + MATCH_TOLERANCE_S, "right"))
        return slice(lo, hi)


class Match(NamedTuple):
    """What the truth log knows about one predicted window."""

    ours: bool
    label: str | None
    sent_at: float | None
    into: float | None = None  # seconds from the start of its last sample's activity


class TruthLog:
    """What was sent, per device: enough to label and time any window the service reports.

    ``capacity`` bounds the samples kept per device (``None``: keep all, for finite
    recordings); endless streams keep the most recent ones, which is all late predictions
    can refer to.
    """

    UNKNOWN = -1

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.labels: list[str] = []
        self._codes: dict[str, int] = {}
        self._devices: dict[str, _DeviceLog] = {}
        self._lock = threading.Lock()

    def record(self, chunk: Chunk, sent_at: float) -> None:
        """Remember ``chunk`` as published at ``sent_at`` (``time.perf_counter()``)."""
        if chunk.labels is None:
            codes = np.full(chunk.t.size, self.UNKNOWN, np.int32)
        else:
            codes = np.fromiter(
                (self._code(str(label)) for label in chunk.labels), np.int32, chunk.t.size
            )
        with self._lock:
            log = self._devices.get(chunk.device)
            if log is None:
                log = self._devices[chunk.device] = _DeviceLog(self.capacity)
            log.append(chunk.t, codes, sent_at)

    def _code(self, label: str) -> int:
        code = self._codes.get(label)
        if code is None:
            code = self._codes[label] = len(self.labels)
            self.labels.append(label)
        return code

    def lookup(self, device: str, start: float, end: float) -> Match:
        """Whether a window is made of samples this run sent, its true label (the majority
        over the samples it covers; ``None`` when unlabelled) and when its last sample
        was published, and how far into the activity of its last sample it starts (as the
        offline evaluation measures it).

        A window that starts before the first sample this run sent to the device is not
        this run's: the service still held samples from an earlier run of the same id.
        """
        with self._lock:
            log = self._devices.get(device)
            if log is None or log.first is None or start < log.first - MATCH_TOLERANCE_S:
                return Match(False, None, None)
            span = log.span(start, end)
            codes = log.code[span]
            sent = into = None
            if span.stop > span.start:
                sent = float(log.sent[span.stop - 1])
                into = start - float(log.since[span.stop - 1])
        known = codes[codes != self.UNKNOWN]
        if known.size == 0:
            return Match(True, None, sent, into)
        return Match(True, self.labels[int(np.bincount(known).argmax())], sent, into)


@dataclass
class WindowCounter:
    """How many windows the service will classify for what was sent to one device.

    Mirrors the service's windowing: ``window`` samples at ``rate_hz`` (timestamps are
    resampled to it), a new window every ``hop`` samples, and a gap longer than ``max_gap``
    seconds restarting the window.
    """

    hop: int = ServeConfig.hop
    rate_hz: float = DEFAULT_RATE_HZ
    max_gap: float = ServeConfig.max_gap
    window: int = WINDOW
    _done: int = 0
    _first: float | None = None
    _last: float | None = None

    def add(self, t: np.ndarray) -> None:
        """Count samples sent with timestamps ``t`` (out-of-order ones are ignored)."""
        t = np.asarray(t, np.float64)
        before = -math.inf if self._last is None else self._last
        latest = np.maximum.accumulate(np.concatenate([[before], t]))
        t = t[t > latest[:-1]]  # the service drops out-of-order and duplicate samples
        if t.size == 0:
            return
        steps = np.diff(t, prepend=before)
        for start in np.flatnonzero(steps > self.max_gap):  # a new segment starts here
            if start > 0:
                self._last = float(t[start - 1])
            self._done += self._segment_windows()
            self._first = float(t[start])
        self._last = float(t[-1])

    def _segment_windows(self) -> int:
        if self._first is None:
            return 0
        # grid points at rate_hz from the first timestamp, up to the last (1 ms snap)
        samples = math.floor((self._last - self._first + MATCH_TOLERANCE_S) * self.rate_hz) + 1
        return 0 if samples < self.window else 1 + (samples - self.window) // self.hop

    @property
    def expected(self) -> int:
        return self._done + self._segment_windows()


def percentiles(values: list[float]) -> dict[str, float | None]:
    """``{p50, p90, p99, max}`` of ``values`` (``None`` each when there are none)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    arr = np.asarray(values)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(arr.max())}


@dataclass
class Latest:
    """The most recent prediction for one device, for live displays."""

    activity: str
    confidence: float
    truth: str | None
    latency_ms: float | None
    received: float
    raw: str | None = None  # the window's own answer, when the service smooths
    calibrated: bool = False  # classified with the device's own calibration


@dataclass
class Scoreboard:
    """Collects predictions (called from the MQTT thread) and builds the report."""

    truth: TruthLog
    devices: set[str] | None = None  # only these devices count; None: every device
    classes: list[str] = field(default_factory=list)
    y_true: list[str] = field(default_factory=list)
    y_pred: list[str] = field(default_factory=list)
    y_raw: list[str] = field(default_factory=list)  # the model's own answer, before smoothing
    latency: list[float] = field(default_factory=list)
    service_latency: list[float] = field(default_factory=list)
    latest: dict[str, Latest] = field(default_factory=dict)
    received: int = 0
    foreign: int = 0  # predictions for our ids about samples sent before this run
    hits: int = 0
    unmatched: int = 0
    flips: int = 0  # consecutive predictions of a device that changed activity
    raw_flips: int = 0  # the same for the windows' own answers (``raw``), when smoothed
    bad: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)
    # with calibration labels sent: the first seconds of each activity were labels, and
    # only windows from SCORE_FROM_S into an activity are scored (as evaluate does)
    calibrate_seconds: float | None = None
    cal_true: list[str] = field(default_factory=list)
    cal_pred: list[str] = field(default_factory=list)
    cal_raw: list[str] = field(default_factory=list)
    cal_flagged: int = 0  # scored predictions that said "calibrated": true
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_prediction(self, payload: bytes, received_at: float | None = None) -> None:
        """Score one prediction payload; malformed ones are counted, never raised."""
        received_at = time.perf_counter() if received_at is None else received_at
        try:
            msg = orjson.loads(payload)
            device = str(msg["device"])
            activity = str(msg["activity"])
            window = msg["window"]
            start, end = float(window["start"]), float(window["end"])
            confidence = float(msg.get("confidence", math.nan))
            # `activity` is what the service publishes (smoothed when it smooths); `raw`
            # holds the window's own answer. A service without `raw` publishes that alone.
            raw = msg.get("raw")
            raw_activity = activity if raw is None else str(raw["activity"])
            raw = None if raw is None else raw_activity
            calibrated = msg.get("calibrated") is True
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            with self._lock:
                self.bad[type(exc).__name__] += 1
            return
        if self.devices is not None and device not in self.devices:
            return
        match = self.truth.lookup(device, start, end)
        label = match.label
        latency = None if match.sent_at is None else (received_at - match.sent_at) * 1000.0
        with self._lock:
            if not match.ours:
                self.foreign += 1
                return
            self.received += 1
            for name in msg.get("probs") or ():
                if name not in self.classes:
                    self.classes.append(name)
            if "model" in msg:
                self.models[str(msg["model"])] += 1
            if isinstance(msg.get("latency_ms"), int | float):
                self.service_latency.append(float(msg["latency_ms"]))
            if latency is not None:
                self.latency.append(latency)
            if label is None:
                self.unmatched += 1
            else:
                self.y_true.append(label)
                self.y_pred.append(activity)
                self.y_raw.append(raw_activity)
                self.hits += label == activity
                if self.calibrate_seconds is not None and scored_after_labels(
                    match.into + MATCH_TOLERANCE_S
                ):
                    self.cal_true.append(label)
                    self.cal_pred.append(activity)
                    self.cal_raw.append(raw_activity)
                    self.cal_flagged += calibrated
            before = self.latest.get(device)
            if before is not None:
                self.flips += before.activity != activity
                self.raw_flips += None not in (before.raw, raw) and before.raw != raw
            self.latest[device] = Latest(
                activity, confidence, label, latency, received_at, raw, calibrated
            )

    def latest_copy(self) -> dict[str, Latest]:
        """Each device's most recent prediction (a copy, safe to read from any thread)."""
        with self._lock:
            return dict(self.latest)

    @property
    def running_accuracy(self) -> float | None:
        with self._lock:
            return self.hits / len(self.y_true) if self.y_true else None

    def report(self, windows_expected: int, **extra: Any) -> dict[str, Any]:
        """The final report: the contract's keys first, then details."""
        with self._lock:
            y_true, y_pred, y_raw = list(self.y_true), list(self.y_pred), list(self.y_raw)
            classes = list(self.classes)
            for name in (*y_true, *y_pred):
                if name not in classes:
                    classes.append(name)
            out: dict[str, Any] = {
                "accuracy": None,
                "macro_f1": None,
                "raw_accuracy": None,
                "windows_expected": int(windows_expected),
                "windows_received": self.received,
                "latency_ms": percentiles(self.latency),
                "service_latency_ms": percentiles(self.service_latency),
                "windows_scored": len(y_true),
                "windows_unlabelled": self.unmatched,
                "windows_foreign": self.foreign,
                "bad_predictions": sum(self.bad.values()),
                "models": dict(self.models),
            }
        if y_true:
            scores = classification_report(y_true, y_pred, classes)
            out.update(accuracy=scores["accuracy"], macro_f1=scores["macro_f1"])
            out["raw_accuracy"] = float(np.mean(np.asarray(y_raw) == np.asarray(y_true)))
            out.update(classes=classes, per_class=scores["per_class"])
            out["confusion"] = scores["confusion"]
        if self.calibrate_seconds is not None:
            out["calibrated"] = self._calibrated_report()
        out.update(extra)
        return out

    def _calibrated_report(self) -> dict[str, Any]:
        """Accuracy on the windows from SCORE_FROM_S into an activity, published (smoothed)
        and raw, and the share of them the service said were calibrated."""
        with self._lock:
            truth = np.asarray(self.cal_true)
            pred, raw, flagged = (
                np.asarray(self.cal_pred),
                np.asarray(self.cal_raw),
                self.cal_flagged,
            )
        n = int(truth.size)
        return {
            "accuracy": float(np.mean(pred == truth)) if n else None,
            "raw_accuracy": float(np.mean(raw == truth)) if n else None,
            "windows": n,
            "seconds": self.calibrate_seconds,
            "score_from_s": SCORE_FROM_S,
            "calibrated_share": flagged / n if n else None,
        }


def format_report(report: dict[str, Any]) -> str:
    """The report as text: counts, scores, latency and the confusion matrix."""
    lines = []
    if report.get("simulated"):
        lines.append("SIMULATED devices (synthetic signals, not recordings)")
    lines.append(
        f"windows expected {report['windows_expected']}, received {report['windows_received']}"
        f" ({report['windows_scored']} with a true label)"
    )
    for key, title in (("latency_ms", "end-to-end"), ("service_latency_ms", "in service")):
        lat = report[key]
        if lat["p50"] is not None:
            lines.append(
                f"latency {title}: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"
            )
    if report.get("windows_foreign"):
        lines.append(
            f"{report['windows_foreign']} prediction(s) about samples sent before this run "
            "were ignored"
        )
    errors = report.get("service_errors") or {}
    if errors:
        lines.append(
            "the service reported errors about these devices: "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items()))
        )
    if "rate_limited" in errors:
        lines.append(
            "rate_limited: the devices sent faster than the service's per-device limit "
            "(--device-rate-margin, 25 x real time after --device-burst, 120 s of data, by "
            "default); replay at --speed 20 or slower, or raise the service's limit"
        )
    if report["accuracy"] is None:
        lines.append("accuracy: n/a (no labelled windows)")
    else:
        scores = {k: report[k] for k in ("accuracy", "macro_f1", "per_class", "confusion")}
        lines.append(format_scores(scores, report["classes"]))
        lines.append(
            f"accuracy of the published activity {report['accuracy']:.4f}, of each window's "
            f"own (raw) answer {report['raw_accuracy']:.4f}"
        )
    cal = report.get("calibrated")
    if cal:
        where = f"windows >= {cal['score_from_s']:g} s into an activity"
        if not cal["windows"]:
            lines.append(f"calibrated on {cal['seconds']:g} s per activity: n/a (no {where})")
        else:
            lines.append(
                f"calibrated on {cal['seconds']:g} s per activity, {cal['windows']} {where}: "
                f"published {cal['accuracy']:.4f}, raw {cal['raw_accuracy']:.4f}, "
                f"{100 * cal['calibrated_share']:.1f} % said calibrated"
            )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON."""
    path = Path(path)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return path
