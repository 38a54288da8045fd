"""HAR calibration from a wearer's labels: ``<prefix>/<id>/label`` -> that device's prototypes.

Read in the order a label flows:

- decode (MQTT thread): :func:`label_decoder` checks a label payload against the model's
  classes and returns a :class:`Label`, or raises ``bad_label``;
- mark (MQTT thread): :meth:`WindowBuffer.label` turns it into a device-time range with
  :func:`label_range` (checked against the device's latest reading) and queues it on the
  device's :class:`DeviceCalibration`;
- learn and apply (inference worker, in window order): :meth:`Calibrator.step` takes the
  queued ranges, adds the embeddings of the windows inside them (the recent ones it kept,
  and those still to come) to the device's running class sums, and mixes the prototype
  probabilities into the CNN's (:mod:`harstream.models.har.calibration`). A change is
  saved to the :class:`~harstream.stream.calibration_store.CalibrationStore` and published,
  retained, on ``<prefix>/<id>/calibration``.

A window is labelled when it lies wholly inside a labelled range. The two threads share
only :attr:`DeviceCalibration.pending`, a deque (append and popleft are atomic).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from harstream.models.har.calibration import PrototypeCalibration, Prototypes, PrototypeSums
from harstream.stream.calibration_store import CalibrationStore, SavedCalibration
from harstream.stream.routes import Decoder, Extra, PayloadError

LABEL_SUFFIX = "label"  # <prefix>/<id>/label: the wearer's labels, in
CALIBRATION_SUFFIX = "calibration"  # <prefix>/<id>/calibration: the retained summary, out
BAD_LABEL = "bad_label"

# A class's prototype is used from this many labelled windows on: one or two windows make
# a noisy mean (3 windows at the default hop are 6 s of activity).
MIN_WINDOWS = 3
# How far back a start/end label may reach: the worker keeps each device's windows that
# ended in the last LABEL_PAST_S (their embeddings, 640 bytes each for the shipped CNN).
LABEL_PAST_S = 30.0
# How far ahead of the latest reading a label may start, and the longest label.
LABEL_AHEAD_S = 60.0
MAX_LABEL_S = 600.0


class Label(NamedTuple):
    """A decoded label: a class index (None for a reset), and either a device-time range
    (``start``, ``end``) or ``seconds`` of the readings that follow."""

    activity: int | None
    start: float | None = None
    end: float | None = None
    seconds: float | None = None


def _bad(message: str) -> PayloadError:
    return PayloadError(BAD_LABEL, message)


def _time(doc: dict[str, Any], key: str) -> float:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{key} must be a finite number of seconds")
    return float(value)


def label_decoder(classes: Sequence[str]) -> Decoder:
    """The decoder of label payloads for a model with ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    shape = (
        'expected {"activity": A, "start": T0, "end": T1}, {"activity": A, "seconds": S} '
        'or {"reset": true}'
    )

    def decode(payload: bytes, _content_type: str | None) -> Label:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"malformed JSON ({exc}); {shape}") from None
        if not isinstance(doc, dict):
            raise _bad(f"a label is a JSON object; {shape}")
        if doc.get("reset") is True:
            if len(doc) != 1:
                raise _bad('a reset is {"reset": true} alone')
            return Label(None)
        activity = doc.get("activity")
        if activity not in index:
            raise _bad(f"unknown activity {activity!r:.40}; the model knows {', '.join(classes)}")
        timed = "start" in doc or "end" in doc
        if timed == ("seconds" in doc) or set(doc) - {"activity", "start", "end", "seconds"}:
            raise _bad(f"give start and end, or seconds; {shape}")
        if timed:
            if "start" not in doc or "end" not in doc:
                raise _bad("give both start and end")
            start, end = _time(doc, "start"), _time(doc, "end")
            if end <= start:
                raise _bad(f"end ({end:.6g}) must be after start ({start:.6g})")
            return Label(index[activity], start=start, end=end)
        return Label(index[activity], seconds=_time(doc, "seconds"))

    return decode


def label_range(label: Label, latest: float | None, span_s: float) -> tuple[float, float]:
    """The device-time range a label covers, given the device's ``latest`` reading time (None
    before its first) and the time one window spans; ``bad_label`` when the range could
    hold no window, is longer than :data:`MAX_LABEL_S` or lies far from the readings."""
    if latest is None:
        raise _bad("no readings from this device yet; label the readings it sends")
    if label.seconds is not None:
        start, end = latest, latest + label.seconds
    else:
        start, end = label.start, label.end
    length = end - start
    if length < span_s:
        raise _bad(f"{length:.3g} s is shorter than one window ({span_s:.3g} s)")
    if length > MAX_LABEL_S:
        raise _bad(f"{length:.6g} s is longer than the longest label ({MAX_LABEL_S:g} s)")
    if end < latest - LABEL_PAST_S:
        raise _bad(
            f"the label ends {latest - end:.6g} s before the device's latest reading "
            f"({latest:.6f}); the service keeps the windows of the last {LABEL_PAST_S:g} s"
        )
    if start > latest + LABEL_AHEAD_S:
        raise _bad(
            f"the label starts {start - latest:.6g} s after the device's latest reading "
            f"({latest:.6f}); at most {LABEL_AHEAD_S:g} s ahead"
        )
    return start, end


class Marked(NamedTuple):
    """A labelled range as the worker keeps it (``activity`` None: a reset)."""

    activity: int | None
    start: float
    end: float


class DeviceCalibration:
    """One device's calibration: its queued labels (from the MQTT thread), and on the worker
    its labelled ranges still open, its recent windows, its class sums and prototypes."""

    __slots__ = ("pending", "ranges", "recent", "sums", "protos", "loaded")

    def __init__(self, recent: int) -> None:
        self.pending: deque[Marked] = deque()
        self.ranges: list[Marked] = []
        self.recent: deque[tuple[float, float, np.ndarray]] = deque(maxlen=recent)
        self.sums: PrototypeSums | None = None  # created on the worker at the first window
        self.protos: Prototypes | None = None
        self.loaded = False


class Calibrator:
    """The worker's side of calibration for one route: ``step`` per window, in order."""

    def __init__(
        self,
        classes: Sequence[str],
        model: str,
        store: CalibrationStore | None,
        *,
        windows_per_s: float,
        span_s: float,
        method: PrototypeCalibration | None = None,
    ) -> None:
        self.classes = list(classes)
        self.model = model
        self.store = store
        self.method = method or PrototypeCalibration()
        # the windows that may lie inside a label ending LABEL_PAST_S ago
        self.recent = math.ceil((LABEL_PAST_S + span_s) * windows_per_s) + 1

    def new_device(self) -> DeviceCalibration:
        return DeviceCalibration(self.recent)

    def step(
        self,
        device: str,
        cal: DeviceCalibration,
        start: float,
        end: float,
        probs: np.ndarray,
        emb: np.ndarray,
    ) -> tuple[np.ndarray, bool, Extra | None]:
        """This window's probabilities (calibrated when the device has prototypes), whether
        they are calibrated, and the retained calibration message when it changed."""
        sums = cal.sums
        if sums is None:
            sums = cal.sums = PrototypeSums(len(self.classes), emb.shape[-1])
            self._load(device, cal)
        changed = False
        while cal.pending:
            mark = cal.pending.popleft()
            if mark.activity is None:
                sums.clear()
                cal.ranges.clear()
                changed = True
                if self.store is not None:
                    self.store.delete(device)
                continue
            cal.ranges.append(mark)
            for w_start, w_end, w_emb in cal.recent:
                if mark.start <= w_start and w_end <= mark.end:
                    sums.add(w_emb, mark.activity)
                    changed = True
        emb = np.array(emb, np.float32)  # a copy: the row is a view of the whole batch
        cal.recent.append((start, end, emb))
        if cal.ranges:
            for mark in cal.ranges:
                if mark.start <= start and end <= mark.end:
                    sums.add(emb, mark.activity)
                    changed = True
                    break
            cal.ranges = [m for m in cal.ranges if m.end > end]
        extra = None
        if changed:
            cal.protos = sums.prototypes(MIN_WINDOWS)
            extra = self._changed(device, sums)
        if cal.protos is None:
            return probs, False, extra
        calibrated = self.method.apply(cal.protos, emb[None], probs[None])[0]
        return calibrated, True, extra

    def _load(self, device: str, cal: DeviceCalibration) -> None:
        saved = None if self.store is None else self.store.load(device, self.model)
        if saved is not None and saved.sums.shape == cal.sums.sums.shape:
            cal.sums.sums[:] = saved.sums
            cal.sums.counts[:] = saved.counts
            cal.protos = cal.sums.prototypes(MIN_WINDOWS)

    def _changed(self, device: str, sums: PrototypeSums) -> Extra:
        now = time.time()
        if self.store is not None and sums.counts.any():
            self.store.save(device, self.model, SavedCalibration(sums.sums, sums.counts, now))
        doc = {
            "device": device,
            "classes": {
                name: int(n) for name, n in zip(self.classes, sums.counts, strict=True) if n
            },
            "updated": now,
            "model": self.model,
        }
        return Extra(CALIBRATION_SUFFIX, orjson.dumps(doc), retain=True)
