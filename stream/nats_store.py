"""Device calibrations in a NATS JetStream key-value bucket, where every worker finds them.

Behind NATS (``serve --nats``) a device moves between workers when partitions change
hands; its calibration (labelled class sums, :mod:`stream.calibration_store`) must follow
it. :class:`NatsCalibrationStore` keeps one key per device in the bucket
``harstream_<prefix>_calibrations`` (no expiry, one revision). A worker loads a device's
calibration at the device's first window on that worker, that is right after it took the
device's partition over, and writes it on every change, as the SQLite store does.

The calls come from the HAR inference worker thread and run on the NATS input's event loop
(:class:`stream.nats_input.NatsInput`), waiting at most ``CALL_TIMEOUT_S``: a store that does
not answer costs the device its calibration for that window (logged), never a stall.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson

from harstream.stream.calibration_store import SavedCalibration, made_for

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0

Runner = Callable[[Coroutine[Any, Any, Any], float], Any]


def key_of(device: str) -> str:
    """The bucket key of ``device``: ids may end with '.', keys may not; '=' is in no id."""
    return "device." + device.replace(".", "=")


def encode(model: str, saved: SavedCalibration) -> bytes:
    counts = np.ascontiguousarray(saved.counts, "<i8")
    sums = np.ascontiguousarray(saved.sums, "<f8")
    return orjson.dumps(
        {
            "model": model,
            "classes": int(sums.shape[0]),
            "updated": saved.updated,
            "counts": base64.b64encode(counts.tobytes()).decode(),
            "sums": base64.b64encode(sums.tobytes()).decode(),
        }
    )


def decode(data: bytes) -> tuple[str, SavedCalibration]:
    doc = orjson.loads(data)
    counts = np.frombuffer(base64.b64decode(doc["counts"]), "<i8").copy()
    sums = np.frombuffer(base64.b64decode(doc["sums"]), "<f8").reshape(doc["classes"], -1).copy()
    return str(doc["model"]), SavedCalibration(sums, counts, float(doc["updated"]))


class NatsCalibrationStore:
    """A :class:`stream.calibration_store.CalibrationStore` in a KV bucket; ``kv`` returns
    the bucket (a nats-py ``KeyValue``, once connected) and ``run`` runs a coroutine on its
    event loop and returns the result."""

    def __init__(self, kv: Callable[[], Any], run: Runner) -> None:
        self._kv = kv
        self._run = run

    def _call(self, what: str, device: str, coro: Callable[[Any], Any]) -> Any:
        import nats.js.errors

        async def call() -> Any:
            try:
                return await coro(self._kv())
            except nats.js.errors.KeyNotFoundError:
                return None

        try:
            return self._run(call(), CALL_TIMEOUT_S)
        except Exception as exc:  # the device goes on uncalibrated for now
            log.warning(
                "event=calibration_store_failed op=%s device=%s error=%s: %s",
                what,
                device,
                type(exc).__name__,
                exc,
            )
            return None

    def load(self, device: str, model: str) -> SavedCalibration | None:
        entry = self._call("load", device, lambda kv: kv.get(key_of(device)))
        if entry is None or not entry.value:
            return None
        try:
            saved_model, saved = decode(entry.value)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("event=calibration_unreadable device=%s error=%r", device, exc)
            return None
        if not made_for(device, saved_model, model):
            return None
        return saved

    def save(self, device: str, model: str, saved: SavedCalibration) -> None:
        data = encode(model, saved)
        self._call("save", device, lambda kv: kv.put(key_of(device), data))

    def delete(self, device: str) -> None:
        self._call("delete", device, lambda kv: kv.delete(key_of(device)))
