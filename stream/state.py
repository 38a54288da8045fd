"""The service's buffered per-device state across a planned restart: one versioned file.

On stop, after the last queued window is published, the service saves every device's
buffer (:class:`stream.routes.Restorable`); on start, before subscribing, it loads the
file and deletes it, so a crash later cannot bring back stale state. With the persistent
MQTT session (unacknowledged readings stay with the broker) the restarted service then
cuts exactly the windows an uninterrupted one would have.

File format, version 1: gzip of one UTF-8 JSON object::

    {"format": "harstream-state", "version": 1, "saved_at": <unix seconds>,
     "client_id": "<MQTT client id>", "prefix": "<topic prefix>",
     "families": {"<family>": {"model": "<model tag>",
                               "devices": [["<id>", <idle seconds>, <snapshot>], ...]}}}

``devices`` lists the least recently seen first. A snapshot is the buffer's own object;
a numpy array in it is written as ``{"$array": "<f4" or "<f8", "shape": [...], "b64":
"<base64 of the little-endian values>"}``, so floats come back bit for bit. JSON and
base64 only: reading a state file can never run code (no pickle).
"""

from __future__ import annotations

import base64
import gzip
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

log = logging.getLogger(__name__)

FORMAT = "harstream-state"
VERSION = 1
ARRAY_KEY = "$array"
ARRAY_DTYPES = ("<f4", "<f8")
# gzip level 1: base64 float rows of 10,000 devices (11.2 MB) went to 8.6 MB in 0.35 s; level 6
# saved 2% more in 0.46 s. The whole save of 10,000 HAR buffers took 0.6 s, the load 0.35 s.
COMPRESS_LEVEL = 1


class StateError(ValueError):
    """A state file that cannot be used; the message says why."""


class DeviceState(NamedTuple):
    """One id's saved buffer: ``idle_s`` since its last message when saved."""

    id: str
    idle_s: float
    snapshot: dict[str, Any]


@dataclass(frozen=True)
class FamilyState:
    """One family's saved buffers, least recently seen first, and the model that cut them."""

    model: str
    devices: list[DeviceState] = field(default_factory=list)


@dataclass(frozen=True)
class SavedState:
    """The whole file: who saved it, when, and every family's buffers."""

    client_id: str
    prefix: str
    saved_at: float
    families: dict[str, FamilyState]


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        dtype = "<f4" if value.dtype == np.float32 else "<f8"
        data = np.ascontiguousarray(value, dtype).tobytes()
        return {
            ARRAY_KEY: dtype,
            "shape": list(value.shape),
            "b64": base64.b64encode(data).decode("ascii"),
        }
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if ARRAY_KEY in value:
            dtype = value[ARRAY_KEY]
            if dtype not in ARRAY_DTYPES:
                raise StateError(f"array type {dtype!r} is not one of {ARRAY_DTYPES}")
            data = np.frombuffer(base64.b64decode(value["b64"], validate=True), dtype)
            return data.astype(dtype[1:]).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def dumps(state: SavedState) -> bytes:
    """``state`` in the file format (what :func:`save` writes, :func:`loads` reads)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": state.saved_at,
        "client_id": state.client_id,
        "prefix": state.prefix,
        "families": {
            family: {
                "model": fam.model,
                "devices": [[d.id, d.idle_s, _encode(d.snapshot)] for d in fam.devices],
            }
            for family, fam in state.families.items()
        },
    }
    return gzip.compress(orjson.dumps(doc), COMPRESS_LEVEL, mtime=0)


def save(path: Path, state: SavedState) -> int:
    """Write ``state`` to ``path`` atomically (a private temp file, fsync, rename); returns
    the bytes written. The file is readable by its owner only: it holds device data."""
    data = dumps(state)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def loads(data: bytes) -> SavedState:
    """The state :func:`dumps` wrote; raises :class:`StateError` for anything else."""
    try:
        doc = orjson.loads(gzip.decompress(data))
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise StateError(f"not a gzip-compressed JSON state file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise StateError(f"format version {doc.get('version')!r}; this service reads {VERSION}")
    try:
        families = {
            str(family): FamilyState(
                str(fam["model"]),
                [
                    DeviceState(str(d), float(idle), _decode(snap))
                    for d, idle, snap in fam["devices"]
                ],
            )
            for family, fam in doc["families"].items()
        }
        return SavedState(
            str(doc["client_id"]), str(doc["prefix"]), float(doc["saved_at"]), families
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"malformed state file ({type(exc).__name__}: {exc})") from None


def load(
    path: Path,
    *,
    max_age_s: float,
    client_id: str,
    prefix: str,
    now: float | None = None,
) -> SavedState | None:
    """The state saved at ``path`` if it is usable here, else None (the reason is logged).

    The file is deleted in every case: state is restored at most once, and a service that
    crashes later starts clean instead of restoring readings that are long gone.
    Usable means: readable, at most ``max_age_s`` old, saved by this client id (whose
    broker session holds the readings that follow it) for this topic prefix.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("event=state_unreadable path=%s error=%s", path, exc)
        return None
    path.unlink(missing_ok=True)
    try:
        state = loads(data)
    except StateError as exc:
        log.warning("event=state_discarded path=%s reason=%r", path, str(exc))
        return None
    age = (time.time() if now is None else now) - state.saved_at
    reason = None
    if age > max_age_s:
        reason = f"saved {age:.0f} s ago, more than --state-max-age {max_age_s:g} s"
    elif state.client_id != client_id:
        reason = f"saved by client id {state.client_id!r}, this is {client_id!r}"
    elif state.prefix != prefix:
        reason = f"saved for prefix {state.prefix!r}, this is {prefix!r}"
    if reason is not None:
        log.info("event=state_discarded path=%s reason=%r", path, reason)
        return None
    return state
