"""Accelerometer payloads in, prediction and error payloads out.

Accepted accel payloads on ``<prefix>/<id>/accel`` (see docs/contract.md):

- one sample: ``{"x": .., "y": .., "z": .., "t": <unix seconds, optional>}``;
- a batch: ``{"samples": [[x, y, z], ...], "rate_hz": 20, "t0": <unix seconds>}``
  (``rate_hz`` and ``t0`` optional) or rows ``[t, x, y, z]`` (in ``"samples"`` or as a bare
  top-level array);
- binary, for high-rate devices: the 4-byte magic ``HSA1``, then little-endian float64
  ``t0`` (unix seconds; NaN when the device has no clock), float32 ``rate_hz``, then
  ``n`` rows of three float32 ``x, y, z`` (so the payload is ``16 + 12 n`` bytes). Binary
  is recognised only by its magic; a payload whose MQTT 5 content type is
  :data:`BINARY_CONTENT_TYPE` must carry it too, so binary garbage is never read as samples.

Decoding returns :class:`Samples`, or raises :class:`~stream.routes.PayloadError`.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

import numpy as np
import orjson
from harstream.models.har.windows import RATE_HZ
from harstream.stream.routes import PayloadError

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
# - Times: unix seconds or seconds since the device's boot, from 0 to 2100-01-01. The upper
#   bound keeps a 50 ms step representable (float64 resolves 0.5 us there), and it tells a
#   device that sends milliseconds (1.7e12) why its readings are refused.
MAX_TIME_S = 4_102_444_800.0
# - Magnitudes: 10,000 m/s^2 is about 1,000 g, past the range of any accelerometer a
#   wearable carries (+-16 g for a phone or watch, +-400 g for impact sensors). Larger values
#   are a unit mistake or an attack, and above 3.4e38 they would not even fit the float32
#   window (1e39 became inf there and still gave an ordinary-looking prediction).
MAX_ABS_ACCEL = 10_000.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Samples(NamedTuple):
    """Decoded readings: ``xyz`` an ``(n, 3)`` array, per-row unix ``times`` (a float64 array,
    None when untimed), the rate. Arrays, so that buffers can copy whole blocks."""

    xyz: np.ndarray
    times: np.ndarray | None
    rate_hz: float


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


def json_error(exc: orjson.JSONDecodeError, payload: bytes, what: str) -> PayloadError:
    """The PayloadError for JSON that does not parse (shared by the routes): nesting beyond
    orjson's 1,024 levels is ``wrong_type``, NaN/Infinity ``non_finite``, the rest
    ``malformed_json`` with ``what`` and the parser's message."""
    text = str(exc)
    if "depth limit" in text:
        return PayloadError("wrong_type", "values nested too deeply")
    if "infinity" in text or b"NaN" in payload or b"Infinity" in payload:
        return PayloadError("non_finite", f"NaN/infinite values are not allowed ({text})")
    return PayloadError("malformed_json", f"{what}: {text}")


def _looks_binary(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(b < 9 for b in payload[:64])


def describe(value: Any) -> str:
    """A short, safe description of a JSON value for an error message: scalars as they are
    (cut to 40 characters), containers by type and length only. Formatting a container with
    ``repr`` would recurse through it (a value nested 1,000 levels deep raised
    ``RecursionError`` there) and could echo a large payload back."""
    if isinstance(value, list | dict):
        return f"{type(value).__name__} of {len(value)}"
    return f"{value!r:.40}"


def number(value: Any, what: str) -> float:
    """``value`` as a finite float, or a PayloadError naming ``what`` (shared by the routes)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("wrong_type", f"{what} must be a number, got {describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer literal too large for a float
        raise PayloadError("non_finite", f"{what} is too large to be a finite number") from None
    if not math.isfinite(value):
        raise PayloadError("non_finite", f"{what} is {value}, not a finite number")
    return value


def check_time(t: float, what: str) -> float:
    """``t`` if it is a plausible device time in seconds, else ``out_of_range``."""
    if not 0.0 <= t <= MAX_TIME_S:
        hint = " (milliseconds? send seconds)" if MAX_TIME_S < t <= MAX_TIME_S * 1e3 else ""
        raise PayloadError(
            "out_of_range",
            f"{what} is {t:.6g}{hint}; times are seconds from 0 to {MAX_TIME_S:.0f} "
            "(unix time or time since the device started)",
        )
    return t


def _check_times(times: np.ndarray) -> None:
    """Every time finite and within :func:`check_time`'s range (one pass when all are)."""
    if times.min() >= 0.0 and times.max() <= MAX_TIME_S:  # False for NaN too
        return
    if not np.isfinite(times).all():
        raise PayloadError("non_finite", "sample times contain NaN or infinite values")
    check_time(float(times[(times < 0.0) | (times > MAX_TIME_S)][0]), "a sample time")


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
    times = None if t is None else np.array([check_time(number(t, "t"), "t")])
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
        _check_times(times)
        return Samples(xyz, times, rate)
    _check_magnitudes(arr)
    times = None
    if t0 is not None:
        times = check_time(number(t0, "t0"), "t0") + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, rate)


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
    times = None
    if not math.isnan(t0):
        if not math.isfinite(t0):
            raise PayloadError("binary_garbage", f"binary header has an invalid t0 {t0}")
        times = check_time(t0, "t0") + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, float(rate))


def encode_json(doc: Any) -> bytes:
    """orjson, with numpy scalars and arrays serialised natively."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def error_payload(device_id: str | None, kind: str, message: str, topic: str) -> bytes:
    """The JSON published on ``<prefix>/<id>/errors``."""
    return orjson.dumps({"device": device_id, "error": kind, "message": message, "topic": topic})
