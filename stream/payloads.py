"""JSON payload helpers every family shares: numbers and parse errors named as
:class:`~harstream.stream.routes.PayloadError` kinds on the way in, orjson and the
``<prefix>/<id>/errors`` payload on the way out."""

from __future__ import annotations

import math
from typing import Any

import orjson

from harstream.stream.routes import PayloadError


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


def encode_json(doc: Any) -> bytes:
    """orjson, with numpy scalars and arrays serialised natively."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def error_payload(device_id: str | None, kind: str, message: str, topic: str) -> bytes:
    """The JSON published on ``<prefix>/<id>/errors``."""
    return orjson.dumps({"device": device_id, "error": kind, "message": message, "topic": topic})
