"""Where each device's calibration (its labelled class sums and counts) outlives the service.

A :class:`CalibrationStore` keeps one :class:`SavedCalibration` per device, for the model
tag it was made with: a calibration is a set of class means in one model's embedding
space, meaningless for another model. :class:`SqliteStore` is the default (one SQLite
file, standard library only); every call comes from the HAR inference worker, never from
the MQTT thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


def made_for(device: str, saved_model: str, model: str) -> bool:
    """Whether a stored calibration applies to ``model``; logs the one set aside (a
    calibration belongs to the model version it was made for)."""
    if saved_model == model:
        return True
    log.info(
        "event=calibration_ignored device=%s saved_model=%s model=%s: made for another "
        "model; the device needs new labels",
        device,
        saved_model,
        model,
    )
    return False


class SavedCalibration(NamedTuple):
    """A device's running sums ``(C, D)`` and counts ``(C,)`` per class, and when they last
    changed (unix seconds)."""

    sums: np.ndarray
    counts: np.ndarray
    updated: float


@runtime_checkable
class CalibrationStore(Protocol):
    """Per-device calibrations, by model tag."""

    def load(self, device: str, model: str) -> SavedCalibration | None:
        """The device's calibration for ``model``; None when it has none for that model."""
        ...

    def save(self, device: str, model: str, saved: SavedCalibration) -> None: ...

    def delete(self, device: str) -> None: ...


def open_store(where: str | Path | CalibrationStore) -> CalibrationStore:
    """The store ``where`` names: a store itself (e.g. NATS, :mod:`stream.nats_store`), or
    the path of an SQLite file."""
    return where if isinstance(where, CalibrationStore) else SqliteStore(where)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrations (
    device TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    classes INTEGER NOT NULL,
    counts BLOB NOT NULL,
    sums BLOB NOT NULL,
    updated REAL NOT NULL
)
"""


class SqliteStore:
    """A :class:`CalibrationStore` in one SQLite file (created with its folder if missing).

    One row per device (the 6 x 160 float64 sums of the shipped CNN are 7.7 KB). Writes
    commit at once in WAL mode with ``synchronous=NORMAL``: a crash may lose the last
    updates, never corrupt the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # built on the main thread, used by the inference worker (serialised by the lock)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    def load(self, device: str, model: str) -> SavedCalibration | None:
        with self._lock:
            row = self._db.execute(
                "SELECT model, classes, counts, sums, updated FROM calibrations WHERE device = ?",
                (device,),
            ).fetchone()
        if row is None:
            return None
        saved_model, classes, counts, sums, updated = row
        if not made_for(device, saved_model, model):
            return None
        counts_ = np.frombuffer(counts, "<i8").copy()
        sums_ = np.frombuffer(sums, "<f8").reshape(classes, -1).copy()
        return SavedCalibration(sums_, counts_, float(updated))

    def save(self, device: str, model: str, saved: SavedCalibration) -> None:
        counts = np.ascontiguousarray(saved.counts, "<i8").tobytes()
        sums = np.ascontiguousarray(saved.sums, "<f8")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calibrations VALUES (?, ?, ?, ?, ?, ?)",
                (device, model, sums.shape[0], counts, sums.tobytes(), saved.updated),
            )

    def delete(self, device: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM calibrations WHERE device = ?", (device,))
