"""Accelerometer payloads in, prediction and error payloads out.

Accepted accel payloads on ``<prefix>/<id>/accel`` (see the README's MQTT contract):

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

from models.windows import RATE_HZ
from stream.routes import PayloadError

BINARY_MAGIC = b"HSA1"
BINARY_CONTENT_TYPE = "application/vnd.harstream.accel"
BINARY_HEADER = struct.Struct("<4sdf")  # magic, t0 (float64), rate_hz (float32)
DEFAULT_RATE_HZ = RATE_HZ
MAX_RATE_HZ = 1000.0
MAX_SAMPLES = 4096
_AXES = ("x", "y", "z")


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
        if "infinity" in str(exc) or b"NaN" in payload or b"Infinity" in payload:
            raise PayloadError(
                "non_finite", f"NaN/infinite values are not allowed (JSON parser: {exc})"
            ) from None
        raise PayloadError("malformed_json", f"malformed JSON: {exc}") from None
    if isinstance(doc, dict):
        if "samples" in doc:
            return _decode_batch(doc["samples"], doc.get("rate_hz"), doc.get("t0"))
        return _decode_single(doc)
    if isinstance(doc, list):
        return _decode_batch(doc, None, None)
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


def number(value: Any, what: str) -> float:
    """``value`` as a finite float, or a PayloadError naming ``what`` (shared by the routes)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError("wrong_type", f"{what} must be a number, got {value!r:.40}")
    value = float(value)
    if not math.isfinite(value):
        raise PayloadError("non_finite", f"{what} is {value}, not a finite number")
    return value


def _decode_single(doc: dict[str, Any]) -> Samples:
    missing = [a for a in _AXES if a not in doc]
    if missing:
        raise PayloadError(
            "missing_axes",
            f'sample lacks {", ".join(missing)}; expected {{"x": .., "y": .., "z": ..}} '
            'or {"samples": [[x, y, z], ...]}',
        )
    row = [number(doc[a], a) for a in _AXES]
    t = doc.get("t")
    times = None if t is None else np.array([number(t, "t")])
    return Samples(np.array([row]), times, DEFAULT_RATE_HZ)


def _decode_batch(rows: Any, rate_hz: Any, t0: Any) -> Samples:
    if not isinstance(rows, list):
        raise PayloadError("wrong_type", f"samples must be an array, got {type(rows).__name__}")
    if not rows:
        raise PayloadError("empty", "samples is empty")
    if len(rows) > MAX_SAMPLES:
        raise PayloadError("oversize", f"{len(rows)} samples in one message; at most {MAX_SAMPLES}")
    try:
        arr = np.array(rows)
    except ValueError:
        raise PayloadError(
            "wrong_type", "samples rows have different lengths; use [x, y, z] or [t, x, y, z]"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise PayloadError("wrong_type", "samples must hold numbers only")
    if arr.ndim != 2:
        raise PayloadError("wrong_type", "samples must be rows [x, y, z] or [t, x, y, z]")
    if arr.shape[1] not in (3, 4):
        raise PayloadError(
            "missing_axes",
            f"sample rows have {arr.shape[1]} values; expected [x, y, z] or [t, x, y, z]",
        )
    if not np.isfinite(arr).all():
        raise PayloadError("non_finite", "samples contain NaN or infinite values")
    rate = DEFAULT_RATE_HZ if rate_hz is None else _rate(rate_hz)
    if arr.shape[1] == 4:
        if t0 is not None:
            raise PayloadError("wrong_type", "give t0 or per-row times [t, x, y, z], not both")
        return Samples(arr[:, 1:], arr[:, 0].astype(np.float64), rate)
    times = None
    if t0 is not None:
        times = number(t0, "t0") + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, rate)


def _rate(value: Any) -> float:
    rate = number(value, "rate_hz")
    if not 0 < rate <= MAX_RATE_HZ:
        raise PayloadError("wrong_type", f"rate_hz must be in (0, {MAX_RATE_HZ:g}], got {rate}")
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
    if not np.isfinite(arr).all():
        raise PayloadError("non_finite", "binary samples contain NaN or infinite values")
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE_HZ):
        raise PayloadError("binary_garbage", f"binary header has an invalid rate_hz {rate}")
    times = None
    if not math.isnan(t0):
        if not math.isfinite(t0):
            raise PayloadError("binary_garbage", f"binary header has an invalid t0 {t0}")
        times = t0 + np.arange(arr.shape[0]) / rate
    return Samples(arr, times, float(rate))


def encode_json(doc: Any) -> bytes:
    """orjson, with numpy scalars and arrays serialised natively."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def error_payload(device_id: str | None, kind: str, message: str, topic: str) -> bytes:
    """The JSON published on ``<prefix>/<id>/errors``."""
    return orjson.dumps({"device": device_id, "error": kind, "message": message, "topic": topic})
