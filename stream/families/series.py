"""The series route: ``<prefix>/<id>/series`` values -> ``<prefix>/<id>/series/forecast``.

A payload is a JSON number, ``{"value": v, "t": <optional>}`` or ``{"values": [v, ...]}``
(a catch-up batch, oldest first). Each stream keeps its last k values (k from the
checkpoint); once it has k, every message yields one forecast of the value after its last
value. ``seq`` counts the stream's values, so a client can match a forecast to the value
it follows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from harstream.stream.payloads import encode_json, json_error, number
from harstream.stream.routes import PayloadError, Route, Sink, load_family_predictor

FAMILY = "series"
MAX_VALUES = 4096
MAX_ABS = 1e30  # the model computes in float32; larger magnitudes overflow its statistics
_NON_FINITE = (b"nan", b"inf", b"-inf", b"infinity", b"-infinity")


def _finite(value: Any, what: str) -> float:
    value = number(value, what)
    if abs(value) > MAX_ABS:
        raise PayloadError("out_of_range", f"{what} is {value:g}; magnitudes up to {MAX_ABS:g}")
    return value


def decode_values(payload: bytes, content_type: str | None = None) -> tuple[list[float], Any]:
    """``(values, t)`` of a payload (``t`` None when not given), or PayloadError."""
    if not payload.strip():
        raise PayloadError("empty", "empty payload")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if payload.strip().lower() in _NON_FINITE:
            raise PayloadError("non_finite", "NaN/infinite values are not allowed") from None
        raise json_error(
            exc, payload, 'expected a number, {"value": v} or {"values": [..]}'
        ) from None
    t = None
    if isinstance(doc, dict):
        if "t" in doc and doc["t"] is not None:
            t = _finite(doc["t"], "t")
        if "value" in doc:
            return [_finite(doc["value"], "value")], t
        if "values" in doc:
            values = doc["values"]
            if not isinstance(values, list) or not values:
                raise PayloadError("wrong_type", "values must be a non-empty array of numbers")
            if len(values) > MAX_VALUES:
                raise PayloadError(
                    "oversize", f"{len(values)} values in one message; at most {MAX_VALUES}"
                )
            return [_finite(v, f"values[{i}]") for i, v in enumerate(values)], t
        raise PayloadError("wrong_type", 'expected {"value": v} or {"values": [v, ...]}')
    return [_finite(doc, "the payload")], t


class LastValues:
    """The last k values of one stream; emits a model input after each message once full."""

    __slots__ = ("_sink", "_values", "_k", "_seq")

    def __init__(self, sink: Sink, k: int) -> None:
        self._sink = sink
        self._values: deque[float] = deque(maxlen=k)
        self._k = k
        self._seq = 0

    def push(self, value: tuple[list[float], Any], wall: float, mono: float) -> int:
        values, t = value
        self._values.extend(values)
        self._seq += len(values)
        if len(self._values) == self._k:
            info = (self._seq, wall if t is None else t)
            self._sink.emit(np.asarray(self._values, np.float32), info, mono)
        return len(values)

    def snapshot(self) -> dict[str, Any]:
        return {"k": self._k, "values": np.asarray(self._values, np.float64), "seq": self._seq}

    def restore(self, state: Mapping[str, Any]) -> None:
        if int(state["k"]) != self._k:
            raise ValueError(f"the saved streams keep {state['k']} values, this model {self._k}")
        values = np.asarray(state["values"], np.float64)
        if values.ndim != 1 or len(values) > self._k:
            raise ValueError(f"{values.shape} saved values do not fit in {self._k}")
        self._values.clear()
        self._values.extend(values.tolist())
        self._seq = int(state["seq"])


def build(config: Any, predictor: Any = None) -> Route:
    """The series route for ``config``; its model is ``predictor`` when given, else the
    checkpoint of ``config.models['series']``, else the shipped one."""
    if predictor is None:
        predictor = load_family_predictor(FAMILY, config.models.get(FAMILY), config.max_batch)
    (k,) = predictor.item_shape
    tag = predictor.tag

    def new_buffer(_id: str, sink: Sink) -> LastValues:
        return LastValues(sink, k)

    def encode(stream_id: str, info: Any, out: np.ndarray, _p: Any, latency_ms: float) -> bytes:
        seq, t = info
        return encode_json(
            {
                "device": stream_id,
                # the float32 value's shortest form: 28.800915, not 28.800914764404297
                "forecast": np.float32(out),
                "horizon": 1,
                "after": {"seq": seq, "t": t},
                "model": tag,
                "latency_ms": round(latency_ms, 3),
            }
        )

    return Route(FAMILY, "series", "series/forecast", decode_values, new_buffer, predictor, encode)
