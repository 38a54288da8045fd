"""The HAR family: ``<prefix>/<id>/accel`` readings -> windows -> ``<prefix>/<id>/activity``.

Read top-down in the order a message flows: decode (accel payloads into :class:`Samples`),
buffer (:class:`WindowBuffer`: one device's readings into model windows), encode
(:func:`build`: the route, with the activity payload it publishes). A device's labels on
``<prefix>/<id>/label``, which calibrate its classification, are the route's second input
topic (:mod:`harstream.stream.families.har_labels`).

Decode. Accepted accel payloads on ``<prefix>/<id>/accel`` (see docs/contract.md):

- one sample: ``{"x": .., "y": .., "z": .., "t": <time, optional>}``;
- a batch: ``{"samples": [[x, y, z], ...], "rate_hz": 20, "t0": <time>}``
  (``rate_hz`` and ``t0`` optional) or rows ``[t, x, y, z]`` (in ``"samples"`` or as a bare
  top-level array);
- binary, for high-rate devices: the 4-byte magic ``HSA1``, then little-endian float64
  ``t0`` (a time as in JSON; NaN when the device has no clock), float32 ``rate_hz``, then
  ``n`` rows of three float32 ``x, y, z`` (so the payload is ``16 + 12 n`` bytes). Binary
  is recognised only by its magic; a payload whose MQTT 5 content type is
  :data:`BINARY_CONTENT_TYPE` must carry it too, so binary garbage is never read as samples.

Times are unix time or time since the device started, in seconds, ms, us or ns: the unit
is inferred per message by the loaders' rule (:mod:`harstream.models.har.timebase`), and
the decoded times are seconds.

Decoding returns :class:`Samples`, or raises :class:`~harstream.stream.routes.PayloadError`.

Buffer. :class:`WindowBuffer` turns a device's readings into model windows (80 x 3 at
20 Hz for HAR). It runs on the MQTT thread for every message, so it does plain float arithmetic
on small Python lists and writes rows into one preallocated array (whole blocks at once
when no resampling is needed); the only allocation per window is the copy handed to the
inference worker.

Time handling, per device:

- Untimed readings at the model's rate are appended as they come; their window times are
  the receive times.
- Timestamped readings (and untimed ones at another declared ``rate_hz``, placed on a
  virtual clock) are resampled onto a grid at the model's rate anchored at the device's
  first timestamp. A grid point whose interval (the 50 ms up to it) holds two or more
  readings gets their mean: a box low-pass filter, so that a 50 or 100 Hz device's motion
  above 10 Hz, which a 20 Hz model cannot represent, is damped instead of aliased. A grid
  point with fewer readings is linearly interpolated between its neighbours. A lone
  reading within 1 ms of a grid point is taken as is, so a device that already sends 20 Hz
  with exact timestamps passes through unchanged and ``window.end`` is the time it sent.
- A reading not after the previous one is dropped (``duplicate`` if equal, else
  ``out_of_order``); a jump longer than ``max_gap_s`` discards the partial window
  (``gap``, counting the discarded samples) and starts over, so no window spans a gap.
  Switching between timed and untimed readings also starts over.
- The work of a message is bounded by its size: readings sparser than 5 Hz on average
  (which resampling would multiply into many grid points) are refused as ``out_of_range``,
  and the resampling loop is bounded by construction.

:meth:`WindowBuffer.snapshot` / :meth:`WindowBuffer.restore` carry a buffer across a
planned restart (see :mod:`harstream.stream.state`): a restored buffer cuts exactly the
windows the original would have cut from the same further readings.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import orjson

from harstream.models.har.smoothing import DeviceSmoother, SmootherParams
from harstream.models.har.timebase import MAX_TIME_S, scale_by_size, time_scale
from harstream.models.har.windows import RATE_HZ
from harstream.stream.calibration_store import open_store
from harstream.stream.contract import probabilities, probability
from harstream.stream.families.har_labels import (
    LABEL_SUFFIX,
    Calibrator,
    DeviceCalibration,
    Label,
    Marked,
    label_decoder,
    label_range,
)
from harstream.stream.payloads import json_error, number
from harstream.stream.routes import (
    Carry,
    Control,
    Extra,
    Link,
    PayloadError,
    Route,
    Sink,
    load_family_predictor,
)

FAMILY = "har"
STATE_SUFFIX = "state"  # <prefix>/<id>/state: the retained smoothed activity, on every change

# --- decode: accel payloads -> Samples ------------------------------------------------------------


BINARY_MAGIC = b"HSA1"
BINARY_CONTENT_TYPE = "application/vnd.harstream.accel"
BINARY_HEADER = struct.Struct("<4sdf")  # magic, t0 (float64), rate_hz (float32)
DEFAULT_RATE_HZ = RATE_HZ
MAX_SAMPLES = 4096
_AXES = ("x", "y", "z")

# What an accelerometer can produce; anything outside is ``out_of_range``. These bounds are
# what keeps the work of one message proportional to its size: a declared rate of 1e-300 Hz
# once sent the resampler into an endless loop (timestamps 1e300 s apart, a 50 ms step that
# no longer moved the grid), and 0.1 Hz made 40,947 windows from one 49 KB message.
# - Rates: Android's slowest standard sensor delay is 200 ms (5 Hz); at 5 Hz or more a
#   reading spans at most 4 points of the 20 Hz grid, so a message yields at most 4 grid
#   points per reading. 1000 Hz is above any consumer or industrial MEMS accelerometer.
MIN_RATE_HZ = 5.0
MAX_RATE_HZ = 1000.0
# - Times: unix time or time since the device's start, in seconds, ms, us or ns by the unit
#   rule the file loaders use (models/har/timebase.py), then within 0 .. MAX_TIME_S seconds
#   (2100-01-01). Per message: one time (``t``, ``t0``) by its size, rows of times by
#   their size and their median step.
# - Magnitudes: 10,000 m/s^2 is about 1,000 g, past the range of any accelerometer a
#   wearable carries (+-16 g for a phone or watch, +-400 g for impact sensors). Larger values
#   are a unit mistake or an attack, and above 3.4e38 they would not even fit the float32
#   window (1e39 became inf there and still gave an ordinary-looking prediction).
MAX_ABS_ACCEL = 10_000.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Samples(NamedTuple):
    """Decoded readings: ``xyz`` an ``(n, 3)`` array, per-row unix ``times`` (a float64 array,
    None when untimed), the rate. Arrays, so that buffers can copy whole blocks.
    ``regular``: the times are ``t0 + i / rate_hz`` (a message with a ``t0``), evenly
    spaced by construction."""

    xyz: np.ndarray
    times: np.ndarray | None
    rate_hz: float
    regular: bool = False


def encode_binary(xyz: Any, rate_hz: float = DEFAULT_RATE_HZ, t0: float | None = None) -> bytes:
    """The binary form of ``xyz`` (n x 3), for devices and tools that publish it."""
    arr = np.ascontiguousarray(xyz, dtype="<f4").reshape(-1, 3)
    header = BINARY_HEADER.pack(BINARY_MAGIC, math.nan if t0 is None else float(t0), rate_hz)
    return header + arr.tobytes()


def decode_accel(payload: bytes, content_type: str | None = None) -> Samples:
    """Decode one accel message (JSON or binary) into :class:`Samples`."""
    if payload[:4] == BINARY_MAGIC:
        return _decode_binary(payload)
    if content_type == BINARY_CONTENT_TYPE:
        raise PayloadError(
            "binary_garbage",
            f"content type {BINARY_CONTENT_TYPE} but the payload does not start with "
            f"the magic {BINARY_MAGIC.decode()}",
        )
    if not payload:
        raise PayloadError("empty", "empty payload")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if _looks_binary(payload):
            raise PayloadError(
                "binary_garbage",
                f"payload is neither JSON nor the binary form (which starts with "
                f"{BINARY_MAGIC.decode()}); first bytes {payload[:8].hex()}",
            ) from None
        raise json_error(exc, payload, "malformed JSON") from None
    bools = b"true" in payload or b"false" in payload
    if isinstance(doc, dict):
        if "samples" in doc:
            return _decode_batch(doc["samples"], doc.get("rate_hz"), doc.get("t0"), bools)
        return _decode_single(doc)
    if isinstance(doc, list):
        return _decode_batch(doc, None, None, bools)
    raise PayloadError(
        "wrong_type",
        f"expected a JSON object or array of samples, got {type(doc).__name__}",
    )


def _looks_binary(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(b < 9 for b in payload[:64])


def device_time(t: float, what: str) -> float:
    """A device's time ``t`` in seconds (unit by its size: a time past 2100-01-01 in seconds
    is ms, us or ns), or ``out_of_range``."""
    seconds = t / scale_by_size(t)
    if not 0.0 <= seconds <= MAX_TIME_S:
        raise _time_error(t, what)
    return seconds


def _time_error(t: float, what: str) -> PayloadError:
    return PayloadError(
        "out_of_range",
        f"{what} is {t:.6g}; times are unix time or time since the device started, in "
        f"seconds, ms, us or ns (up to {MAX_TIME_S:.0f} s, 2100-01-01, in that unit)",
    )


def _device_times(times: np.ndarray) -> np.ndarray:
    """Per-row times in seconds (unit by the rule of :func:`time_scale`), every one finite
    and within 0 .. :data:`MAX_TIME_S`."""
    scale = time_scale(times)
    if scale != 1.0:
        times = times / scale
    if times.min() >= 0.0 and times.max() <= MAX_TIME_S:  # False for NaN too
        return times
    if not np.isfinite(times).all():
        raise PayloadError("non_finite", "sample times contain NaN or infinite values")
    bad = (times < 0.0) | (times > MAX_TIME_S)
    raise _time_error(float(times[bad][0] * scale), "a sample time")


def _check_magnitudes(xyz: np.ndarray) -> None:
    """Values finite and within :data:`MAX_ABS_ACCEL` (so finite in float32 too)."""
    peak = float(np.abs(xyz).max())
    if peak <= MAX_ABS_ACCEL:  # False for NaN too
        return
    if not np.isfinite(xyz).all():
        raise PayloadError("non_finite", "samples contain NaN or infinite values")
    kind = "non_finite" if peak > FLOAT32_MAX else "out_of_range"
    raise PayloadError(
        kind,
        f"a reading of magnitude {peak:.3g} m/s^2; accelerometer readings are m/s^2 "
        f"within +-{MAX_ABS_ACCEL:g} (about 1,000 g)",
    )


def _decode_single(doc: dict[str, Any]) -> Samples:
    missing = [a for a in _AXES if a not in doc]
    if missing:
        raise PayloadError(
            "missing_axes",
            f'sample lacks {", ".join(missing)}; expected {{"x": .., "y": .., "z": ..}} '
            'or {"samples": [[x, y, z], ...]}',
        )
    row = [number(doc[a], a) for a in _AXES]
    if max(map(abs, row)) > MAX_ABS_ACCEL:
        _check_magnitudes(np.array(row))
    xyz = np.array([row])
    t = doc.get("t")
    times = None if t is None else np.array([device_time(number(t, "t"), "t")])
    return Samples(xyz, times, DEFAULT_RATE_HZ)


def _decode_batch(rows: Any, rate_hz: Any, t0: Any, may_hold_bools: bool) -> Samples:
    if not isinstance(rows, list):
        raise PayloadError("wrong_type", f"samples must be an array, got {type(rows).__name__}")
    if not rows:
        raise PayloadError("empty", "samples is empty")
    if len(rows) > MAX_SAMPLES:
        raise PayloadError("oversize", f"{len(rows)} samples in one message; at most {MAX_SAMPLES}")
    try:
        arr = np.array(rows)
    except ValueError:  # ragged rows, or nesting deeper than NumPy's 64 dimensions
        raise PayloadError(
            "wrong_type", "samples rows have different lengths; use [x, y, z] or [t, x, y, z]"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise PayloadError("wrong_type", "samples must hold numbers only")
    if arr.ndim != 2:
        raise PayloadError("wrong_type", "samples must be rows [x, y, z] or [t, x, y, z]")
    if may_hold_bools and _holds_bool(rows):
        raise PayloadError("wrong_type", "samples must hold numbers only")
    if arr.shape[1] not in (3, 4):
        raise PayloadError(
            "missing_axes",
            f"sample rows have {arr.shape[1]} values; expected [x, y, z] or [t, x, y, z]",
        )
    arr = arr.astype(np.float64, copy=False)
    rate = DEFAULT_RATE_HZ if rate_hz is None else _rate(rate_hz)
    if arr.shape[1] == 4:
        if t0 is not None:
            raise PayloadError("wrong_type", "give t0 or per-row times [t, x, y, z], not both")
        times, xyz = arr[:, 0], arr[:, 1:]
        _check_magnitudes(xyz)
        return Samples(xyz, _device_times(times), rate)
    _check_magnitudes(arr)
    if t0 is None:
        return Samples(arr, None, rate)
    times = device_time(number(t0, "t0"), "t0") + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, rate, regular=True)


def _holds_bool(rows: list[Any]) -> bool:
    """Whether a row holds ``true``/``false`` (NumPy would read them as 1 and 0). Only called
    when the payload spells one of them, so ordinary messages skip this Python loop."""
    return any(type(v) is bool for row in rows for v in row)


def _rate(value: Any) -> float:
    return check_rate(number(value, "rate_hz"))


def check_rate(rate: float) -> float:
    """``rate`` if an accelerometer can sample at it, else ``out_of_range``."""
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise PayloadError(
            "out_of_range",
            f"rate_hz is {rate:.6g}; accepted rates are {MIN_RATE_HZ:g} to {MAX_RATE_HZ:g} Hz",
        )
    return rate


def _decode_binary(payload: bytes) -> Samples:
    body = len(payload) - BINARY_HEADER.size
    if body <= 0 or body % 12:
        raise PayloadError(
            "binary_garbage",
            f"binary payload of {len(payload)} bytes; expected a {BINARY_HEADER.size}-byte "
            "header then 12 bytes (3 float32) per sample",
        )
    if body // 12 > MAX_SAMPLES:
        raise PayloadError("oversize", f"{body // 12} samples in a message; at most {MAX_SAMPLES}")
    _, t0, rate = BINARY_HEADER.unpack_from(payload)
    arr = np.frombuffer(payload, dtype="<f4", offset=BINARY_HEADER.size).reshape(-1, 3)
    _check_magnitudes(arr)
    if not math.isfinite(rate):
        raise PayloadError("binary_garbage", f"binary header has an invalid rate_hz {rate}")
    check_rate(rate)
    if math.isnan(t0):
        return Samples(arr, None, float(rate))
    if not math.isfinite(t0):
        raise PayloadError("binary_garbage", f"binary header has an invalid t0 {t0}")
    times = device_time(t0, "t0") + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, float(rate), regular=True)


# --- buffer: one device's readings -> model windows -----------------------------------------------

SNAP_TOLERANCE_S = 0.001
# What a device is told when its readings are dropped (see stream.notices)
DUPLICATE = "a reading with the same time as the one before it (sent twice?)"
OUT_OF_ORDER = "a reading earlier than the one before it: send readings in time order"
SWITCHED = "the device switched between timed and untimed readings"
# A time below this (2001-09-09 as unix time) is time since the device started
SINCE_START_BELOW_S = 1e9


class WindowInfo(NamedTuple):
    """What the encoder learns about a window besides its data: its first and last sample
    times, its number, the segment of continuous data it belongs to (one more after every
    restart: a gap, a timed/untimed switch), the device's smoother (None when off) and its
    calibration (None without one)."""

    start: float
    end: float
    seq: int
    segment: int
    smoother: DeviceSmoother | None
    calibration: DeviceCalibration | None = None


class WindowBuffer:
    """Cuts ``window``-sample windows every ``hop`` samples at ``rate_hz`` from one device."""

    __slots__ = (
        "_sink",
        "_window",
        "_hop",
        "_rate",
        "_dt",
        "_max_gap",
        "_x",
        "_stamps",
        "_n",
        "_seq",
        "_timed",
        "_prev_t",
        "_prev",
        "_anchor",
        "_k",
        "_bin",
        "_bin_n",
        "_segment",
        "_smoother",
        "_calibration",
        "_last_end",
        "_carry",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        window: int = 80,
        axes: int = 3,
        hop: int = 20,
        rate_hz: float = 20.0,
        max_gap_s: float = 1.0,
        smoother: DeviceSmoother | None = None,
        calibration: DeviceCalibration | None = None,
    ) -> None:
        if not 1 <= hop <= window:
            raise ValueError(f"hop must be between 1 and the window length {window}, got {hop}")
        if max_gap_s <= 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self._sink = sink
        self._window = window
        self._hop = hop
        self._rate = rate_hz
        self._dt = 1.0 / rate_hz
        self._max_gap = max_gap_s
        self._x = np.zeros((window, axes), np.float32)
        self._stamps = np.zeros(window, np.float64)
        self._n = 0
        self._seq = 0
        self._timed: bool | None = None
        self._prev_t: float | None = None
        self._prev: list[float] | None = None
        self._anchor = 0.0
        self._k = 0
        self._bin: list[float] = []
        self._bin_n = 0
        self._segment = 0
        self._smoother = smoother
        self._calibration = calibration
        self._last_end: float | None = None  # the time of the last window's last reading
        # the run of windows that follow each other (a new one after every restart), for a
        # route that computes a window from its predecessor's state; kept whatever the
        # route, as a reloaded model may have a stepper where the first had none
        self._carry = Carry()

    def push(self, value: Samples, wall: float, mono: float) -> int:
        """Add one message's readings; returns how many were accepted."""
        xyz = np.asarray(value.xyz)
        timed = value.times is not None
        if timed:
            times = np.asarray(value.times, np.float64)
            if len(times) > 1:
                self._check_density(times, self._prev_t if self._timed else None)
        if self._timed is not None and timed != self._timed:
            self._restart(SWITCHED)
        self._timed = timed
        if timed:
            if self._on_grid(times, value.regular):
                if self._prev_t is None:  # a device's first reading anchors its grid
                    self._anchor, self._k = float(times[0]), 0
                self._extend(xyz, times, mono)
                self._k += len(times)
                self._prev_t, self._prev = float(times[-1]), xyz[-1].tolist()
                return len(times)
            return self._resample(times.tolist(), xyz.tolist(), None, mono, check_gaps=True)
        if value.rate_hz == self._rate:
            self._prev_t = None  # readings are on the grid already: nothing to interpolate
            self._extend(xyz, wall, mono)
            return len(xyz)
        base = 0.0 if self._prev_t is None else self._prev_t
        step = 1.0 / value.rate_hz
        times = [base + (i + 1) * step for i in range(len(xyz))]
        return self._resample(times, xyz.tolist(), wall, mono, check_gaps=False)

    def label(self, label: Label, _wall: float) -> None:
        """Queue a wearer's label for the inference worker, as a range of this device's
        times (see :func:`label_range`); ``bad_label`` when it does not fit the readings."""
        cal = self._calibration
        if cal is None:
            raise PayloadError("bad_label", "calibration is off for this model")
        if label.activity is None:
            cal.pending.append(Marked(None, 0.0, 0.0))
            return
        n = self._n
        latest = float(self._stamps[n - 1]) if n else self._last_end
        span = (self._window - 1) * self._dt
        start, end = label_range(label, latest, span)
        cal.pending.append(Marked(label.activity, start, end))

    def _check_density(self, times: np.ndarray, prev: float | None) -> None:
        """Refuse a message whose readings are sparser than :data:`MIN_RATE_HZ` on average.

        Resampling fills the grid between readings up to ``max_gap_s`` apart, so 4,096 rows
        0.99 s apart would make 81,000 grid points (4,000 windows) from one message. The
        accepted rates (5 Hz and up) allow ``rate / 5`` grid points per reading, plus the
        gap from the previous message: that is the budget. Sorted readings within it pass
        on one subtraction; only others pay for the exact count below.
        """
        dt = self._dt
        budget = len(times) * self._rate / MIN_RATE_HZ + self._max_gap / dt + 2
        first = float(times[0]) if prev is None else prev
        if (float(times.max()) - first) / dt <= budget:
            return
        seq = times if prev is None else np.concatenate(([prev], times))
        # The buffer keeps a reading only if it is later than every reading before it, and
        # fills the grid between consecutive kept readings at most max_gap_s apart.
        kept = seq[np.concatenate(([True], seq[1:] > np.maximum.accumulate(seq)[:-1]))]
        steps = np.diff(kept)
        spanned = float(steps[steps <= self._max_gap].sum())
        if spanned / dt > budget:
            raise PayloadError(
                "out_of_range",
                f"{len(times)} readings spread over {spanned:.3g} s; readings must average "
                f"at least {MIN_RATE_HZ:g} Hz",
            )

    def layout(self) -> dict[str, Any]:
        """What a snapshot must agree on to be restored here (window shape, hop, rate)."""
        return {
            "window": self._window,
            "axes": self._x.shape[1],
            "hop": self._hop,
            "rate_hz": self._rate,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the next windows depend on: the partial window's rows and stamps, the
        grid anchor and index, the previous reading, the pending resampling bin, the timed
        flag, the window counter, the segment and the smoother's state. Arrays are copies;
        the rest is plain JSON values."""
        n = self._n
        smoother = self._smoother
        return {
            "layout": self.layout(),
            "rows": self._x[:n].copy(),
            "stamps": self._stamps[:n].copy(),
            "seq": self._seq,
            "timed": self._timed,
            "prev_t": self._prev_t,
            "prev": self._prev,
            "anchor": self._anchor,
            "k": self._k,
            "bin": self._bin,
            "bin_n": self._bin_n,
            "segment": self._segment,
            "smoother": None if smoother is None else smoother.snapshot(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take over a :meth:`snapshot`; ValueError if it was cut for another layout.

        A snapshot without smoother state (saved with smoothing off, or before the service
        smoothed), or with one of another number of classes (a model with other classes),
        leaves this buffer's smoother fresh, as after a gap."""
        saved, mine = dict(state["layout"]), self.layout()
        if saved != mine:
            raise ValueError(f"the saved window layout {saved} differs from this one {mine}")
        rows = np.asarray(state["rows"], np.float32)
        stamps = np.asarray(state["stamps"], np.float64)
        n = len(rows)
        if rows.shape != (n, mine["axes"]) or stamps.shape != (n,) or n >= self._window:
            raise ValueError(f"a saved partial window of shape {rows.shape} does not fit")
        smoothed = state.get("smoother")
        if self._smoother is not None and smoothed is not None:
            with contextlib.suppress(ValueError):
                self._smoother.restore(smoothed)
        prev, timed = state["prev"], state["timed"]
        self._x[:n] = rows
        self._stamps[:n] = stamps
        self._n = n
        self._seq = int(state["seq"])
        self._timed = None if timed is None else bool(timed)
        self._prev_t = None if state["prev_t"] is None else float(state["prev_t"])
        self._prev = None if prev is None else [float(v) for v in prev]
        self._anchor = float(state["anchor"])
        self._k = int(state["k"])
        self._bin = [float(v) for v in state["bin"]]
        self._bin_n = int(state["bin_n"])
        self._segment = int(state.get("segment", 0))
        self._carry = Carry()  # the saved rows have no computed state

    def _on_grid(self, times: np.ndarray, regular: bool) -> bool:
        """Whether every reading falls on the next grid points, nothing pending in between:
        then resampling is the identity and the block is copied as it is (the common case
        of a device at the model's rate with exact timestamps, one or many per message).

        For ``regular`` times (evenly spaced) a reading's distance from its grid point
        grows linearly along the message, so it is largest at an end: checking the last
        reading is enough (1 us instead of 6 us for 20 readings, on every message of a
        device that sends a ``t0``)."""
        if self._bin_n or self._dt > self._max_gap:
            return False
        if self._prev_t is None:
            first = float(times[0])
        else:
            first = self._anchor + self._k * self._dt
            if abs(times[0] - first) > SNAP_TOLERANCE_S:
                return False
        n = len(times)
        if n == 1:
            return True
        if regular:
            return abs(float(times[-1]) - (first + (n - 1) * self._dt)) <= SNAP_TOLERANCE_S
        grid = first + np.arange(n) * self._dt
        return bool(np.abs(times - grid).max() <= SNAP_TOLERANCE_S)

    def _restart(self, why: str) -> None:
        """Start a new window (and segment) because of ``why``; the partial window's
        samples are dropped as ``gap``."""
        # The next window starts a new segment: the inference worker, which alone touches
        # the smoother, resets it when it sees the new number (no lock between the threads).
        self._segment += 1
        self._carry = Carry()
        if self._n:
            self._sink.drop(
                "gap",
                self._n,
                f"{why}: the partial window's {self._n} "
                "sample(s) were discarded and a new window starts",
            )
        self._n = 0
        self._prev_t = None
        self._prev = None
        self._bin_n = 0

    def _resample(
        self,
        times: list[float],
        xyz: list[list[float]],
        stamp: float | None,
        mono: float,
        *,
        check_gaps: bool,
    ) -> int:
        dt, tol = self._dt, SNAP_TOLERANCE_S
        accepted = 0
        for t, row in zip(times, xyz, strict=True):
            prev_t = self._prev_t
            if prev_t is not None:
                if t <= prev_t:
                    if t == prev_t:
                        self._sink.drop("duplicate", 1, DUPLICATE)
                    else:
                        self._sink.drop("out_of_order", 1, OUT_OF_ORDER)
                    continue
                if check_gaps and t - prev_t > self._max_gap:
                    self._restart(self._gap(prev_t, t))
                    prev_t = None
            accepted += 1
            if prev_t is None:
                self._anchor, self._k = t, 1
                self._append(row, t if stamp is None else stamp, mono)
            else:
                g = self._anchor + self._k * dt
                # Every reading up to grid point g is in: emit g, and so on up to t. The
                # loop is bounded by construction (the grid points between the two readings,
                # plus slack for rounding), not by trusting g to advance: at a time of 1e300
                # adding 50 ms leaves g unchanged, and the ``while`` this replaces never
                # ended. The decoder keeps times within 0..4.1e9 s and rates at 5 Hz or more,
                # so it runs at most max(max_gap, 0.2 s) / dt + 2 times per reading.
                for _ in range(int((t - g) / dt) + 2):
                    if g >= t - tol:
                        break
                    if self._bin_n >= 2:
                        point = [s / self._bin_n for s in self._bin]
                    else:
                        w = (g - prev_t) / (t - prev_t)
                        point = [p + w * (c - p) for p, c in zip(self._prev, row, strict=True)]
                    self._append(point, g if stamp is None else stamp, mono)
                    self._bin_n = 0
                    self._k += 1
                    g = self._anchor + self._k * dt
                if self._bin_n:
                    self._bin = [s + c for s, c in zip(self._bin, row, strict=True)]
                else:
                    self._bin = list(row)
                self._bin_n += 1
                if g <= t + tol:  # the reading falls on grid point g
                    point = [s / self._bin_n for s in self._bin] if self._bin_n >= 2 else row
                    self._append(point, t if stamp is None else stamp, mono)
                    self._bin_n = 0
                    self._k += 1
            self._prev_t, self._prev = t, row
        return accepted

    def _gap(self, prev_t: float, t: float) -> str:
        why = (
            f"readings at {prev_t:.3f} s and {t:.3f} s are {t - prev_t:.6g} s apart, more "
            f"than --max-gap {self._max_gap:g} s"
        )
        if t < SINCE_START_BELOW_S:
            why += (
                " (times below 1e9 are read as seconds since the device started; a clock "
                "in ms, us or ns since then is only told by the steps between the times of "
                "one message: send several readings per message, with their times)"
            )
        return why

    def _append(self, row: list[float], stamp: float, mono: float) -> None:
        self._x[self._n] = row
        self._stamps[self._n] = stamp
        self._n += 1
        if self._n == self._window:
            self._emit(mono)

    def _extend(self, rows: np.ndarray, stamps: np.ndarray | float, mono: float) -> None:
        """Append a block of rows (``stamps``: one per row, or one for all), emitting every
        window it completes."""
        one_stamp = np.ndim(stamps) == 0
        done, total = 0, len(rows)
        while done < total:
            n = self._n
            take = min(total - done, self._window - n)
            self._x[n : n + take] = rows[done : done + take]
            self._stamps[n : n + take] = stamps if one_stamp else stamps[done : done + take]
            self._n = n + take
            done += take
            if self._n == self._window:
                self._emit(mono)

    def _emit(self, mono: float) -> None:
        """Hand the full window to the sink, then keep its last ``window - hop`` rows."""
        n = self._n
        self._seq += 1
        start, end = float(self._stamps[0]), float(self._stamps[n - 1])
        self._last_end = end
        info = WindowInfo(start, end, self._seq, self._segment, self._smoother, self._calibration)
        self._sink.emit(self._x.copy(), info, mono, Link(self._carry, self._seq))
        keep = n - self._hop
        self._x[:keep] = self._x[self._hop :]
        self._stamps[:keep] = self._stamps[self._hop :]
        self._n = keep


# --- encode: the route, its activity payload and the change events ------------------------------


def build(config: Any, predictor: Any = None) -> Route:
    """The HAR route for ``config`` (a ServeConfig); its model is ``predictor`` when given, else the
    checkpoint of ``config.models['har']``, else the shipped one."""
    if predictor is None:
        predictor = load_family_predictor(FAMILY, config.models.get(FAMILY), config.max_batch)
    window, axes = predictor.item_shape
    if not 1 <= config.hop <= window:
        raise ValueError(f"--hop must be between 1 and the window {window}, got {config.hop}")
    stepper = predictor.stepper(config.hop) if config.incremental else None
    rate_hz = float(predictor.meta.get("rate_hz", 20.0))
    labels = list(predictor.labels)
    tag = predictor.tag
    params = None
    if config.smoothing == "hmm":
        params = SmootherParams(p_stay=config.smoothing_stay, beta=config.smoothing_beta)
    # a real device makes a window every hop samples at the model's rate, however fast it samples
    real_rate = rate_hz / config.hop
    calibrator = None
    # calibration needs the embeddings: a predictor whose forward returns them second
    if len(predictor.predict_outputs(np.zeros((1, window, axes), predictor.dtype))) == 2:
        store = config.calibration_store
        calibrator = Calibrator(
            labels,
            tag,
            None if store is None else open_store(store),
            windows_per_s=real_rate,
            span_s=(window - 1) / rate_hz,
        )

    def new_buffer(device: str, sink: Sink) -> WindowBuffer:
        return WindowBuffer(
            sink,
            window=window,
            axes=axes,
            hop=config.hop,
            rate_hz=rate_hz,
            max_gap_s=config.max_gap,
            smoother=None if params is None else DeviceSmoother(len(labels), params),
            calibration=None if calibrator is None else calibrator.new_device(),
        )

    def encode(
        device: str, info: WindowInfo, out: Any, _p: Any, latency_ms: float
    ) -> bytes | tuple[bytes, list[Extra]]:
        extras = []
        calibrated = False
        if calibrator is None:
            probs = out
        else:
            probs, emb = out
            probs, calibrated, changed = calibrator.step(
                device, info.calibration, info.start, info.end, probs, emb
            )
            if changed is not None:
                extras.append(changed)
        values = probs.tolist()
        best = int(probs.argmax())
        smoother = info.smoother
        confidence = probability(values[best])
        doc = {"device": device, "activity": labels[best], "confidence": confidence}
        if smoother is not None:
            # on the inference worker, which takes one device's windows in order; calibrated
            # probabilities are filtered with the smoother's calibrated settings
            smoothed = smoother.update(values, info.end, info.segment, calibrated)
            label = smoother.label
            doc["activity"], doc["confidence"] = labels[label], probability(smoothed[label])
            doc["raw"] = {"activity": labels[best], "confidence": confidence}
        doc["probs"] = probabilities(labels, values)
        doc["window"] = {"start": info.start, "end": info.end, "samples": window}
        doc["model"] = tag
        doc["seq"] = info.seq
        doc["calibrated"] = calibrated
        doc["latency_ms"] = round(latency_ms, 3)
        payload = orjson.dumps(doc)
        if smoother is not None and smoother.changed:
            extras.append(_change_event(device, doc, smoother, labels, tag))
        return (payload, extras) if extras else payload

    controls = {}
    if calibrator is not None:
        controls[LABEL_SUFFIX] = Control(label_decoder(labels), WindowBuffer.label)
    return Route(
        FAMILY,
        "accel",
        "activity",
        decode_accel,
        new_buffer,
        predictor,
        encode,
        real_rate,
        controls,
        stepper,
    )


def _change_event(
    device: str, doc: dict[str, Any], smoother: DeviceSmoother, labels: list[str], tag: str
) -> Extra:
    """The retained ``state`` message of a change of the smoothed activity."""
    previous = smoother.previous
    change = {
        "device": device,
        "activity": doc["activity"],
        "since": smoother.since,
        "previous": labels[previous] if previous >= 0 else None,
        "confidence": doc["confidence"],
        "model": tag,
    }
    return Extra(STATE_SUFFIX, orjson.dumps(change), retain=True)
