"""The text route: ``<prefix>/<id>/text`` messages -> ``<prefix>/<id>/text/class``.

A payload is the message itself as UTF-8 text, or JSON ``{"text": "..."}``. Every message
is classified on its own, so the per-id "buffer" holds only its message counter (``seq``,
kept across planned restarts): it tokenizes (cheap string work on the MQTT thread, with
the checkpoint's vocabulary) and hands the ids on; the engine batches messages from all
ids into one jitted call like HAR windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from harstream.models.text.data import TextEncoder
from harstream.stream.contract import probabilities, probability
from harstream.stream.payloads import json_error
from harstream.stream.routes import PayloadError, Route, Sink, load_family_predictor

FAMILY = "text"
MAX_CHARS = 4096


def decode_text(payload: bytes, content_type: str | None = None) -> str:
    """The message text of a payload, or PayloadError (empty, oversize, invalid UTF-8, ...)."""
    try:
        body = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            "invalid_utf8", f"payload is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    text = body
    if body.lstrip().startswith("{"):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise json_error(exc, payload, "malformed JSON") from None
        text = doc.get("text")
        if not isinstance(text, str):
            raise PayloadError(
                "wrong_type",
                'expected {"text": "<message>"} with a string, or the message as plain UTF-8',
            )
    if not text.strip():
        raise PayloadError("empty", "the message is empty")
    if len(text) > MAX_CHARS:
        raise PayloadError("oversize", f"message of {len(text)} characters; at most {MAX_CHARS}")
    return text


class MessageBuffer:
    """Per-id state of the text route: the message counter; each message is one model input."""

    __slots__ = ("_sink", "_encode", "_seq")

    def __init__(self, sink: Sink, encode: Any) -> None:
        self._sink = sink
        self._encode = encode
        self._seq = 0

    def push(self, value: str, wall: float, mono: float) -> int:
        self._seq += 1
        self._sink.emit(self._encode(value), self._seq, mono)
        return 1

    def snapshot(self) -> dict[str, Any]:
        return {"seq": self._seq}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._seq = int(state["seq"])


def build(config: Any, predictor: Any = None) -> Route:
    """The text route for ``config`` (a ServeConfig); its model is ``predictor`` when
    given, else the checkpoint of ``config.models['text']``, else the shipped one."""
    if predictor is None:
        predictor = load_family_predictor(FAMILY, config.models.get(FAMILY), config.max_batch)
    to_ids = TextEncoder.from_meta(predictor.meta).encode
    labels = list(predictor.labels)
    tag = predictor.tag

    def new_buffer(_id: str, sink: Sink) -> MessageBuffer:
        return MessageBuffer(sink, to_ids)

    def encode(stream_id: str, seq: Any, probs: np.ndarray, _p: Any, latency_ms: float) -> bytes:
        values = probs.tolist()
        best = int(probs.argmax())
        return orjson.dumps(
            {
                "device": stream_id,
                "label": labels[best],
                "confidence": probability(values[best]),
                "probs": probabilities(labels, values),
                "model": tag,
                "seq": seq,
                "latency_ms": round(latency_ms, 3),
            }
        )

    return Route(FAMILY, "text", "text/class", decode_text, new_buffer, predictor, encode)
