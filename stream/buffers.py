"""Per-device sample buffers: 20 Hz windows with hop, resampling, gaps and bounded device tables.

:class:`WindowBuffer` turns a device's readings into model windows (80 x 3 at 20 Hz for
HAR). It runs on the MQTT thread for every message, so it does plain float arithmetic
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
planned restart (see :mod:`stream.state`): a restored buffer cuts exactly the windows the
original would have cut from the same further readings.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from harstream.stream.families.har import MIN_RATE_HZ, Samples
from harstream.stream.routes import Buffer, PayloadError, Sink

SNAP_TOLERANCE_S = 0.001


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

    def push(self, value: Samples, wall: float, mono: float) -> int:
        """Add one message's readings; returns how many were accepted."""
        xyz = np.asarray(value.xyz)
        timed = value.times is not None
        if timed:
            times = np.asarray(value.times, np.float64)
            if len(times) > 1:
                self._check_density(times, self._prev_t if self._timed else None)
        if self._timed is not None and timed != self._timed:
            self._restart()
        self._timed = timed
        if timed:
            if self._on_grid(times):
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
        flag and the window counter. Arrays are copies; the rest is plain JSON values."""
        n = self._n
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
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take over a :meth:`snapshot`; ValueError if it was cut for another layout."""
        saved, mine = dict(state["layout"]), self.layout()
        if saved != mine:
            raise ValueError(f"the saved window layout {saved} differs from this one {mine}")
        rows = np.asarray(state["rows"], np.float32)
        stamps = np.asarray(state["stamps"], np.float64)
        n = len(rows)
        if rows.shape != (n, mine["axes"]) or stamps.shape != (n,) or n >= self._window:
            raise ValueError(f"a saved partial window of shape {rows.shape} does not fit")
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

    def _on_grid(self, times: np.ndarray) -> bool:
        """Whether every reading falls on the next grid points, nothing pending in between:
        then resampling is the identity and the block is copied as it is (the common case
        of a device at the model's rate with exact timestamps, one or many per message)."""
        if self._bin_n or self._dt > self._max_gap:
            return False
        if self._prev_t is None:
            first = float(times[0])
        else:
            first = self._anchor + self._k * self._dt
            if abs(times[0] - first) > SNAP_TOLERANCE_S:
                return False
        if len(times) == 1:
            return True
        grid = first + np.arange(len(times)) * self._dt
        return bool(np.abs(times - grid).max() <= SNAP_TOLERANCE_S)

    def _restart(self) -> None:
        if self._n:
            self._sink.drop("gap", self._n)
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
                    self._sink.drop("duplicate" if t == prev_t else "out_of_order")
                    continue
                if check_gaps and t - prev_t > self._max_gap:
                    self._restart()
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
                # ended. The codec keeps times within 0..4.1e9 s and rates at 5 Hz or more,
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
        info = (float(self._stamps[0]), float(self._stamps[n - 1]), self._seq)
        self._sink.emit(self._x.copy(), info, mono)
        keep = n - self._hop
        self._x[:keep] = self._x[self._hop :]
        self._stamps[:keep] = self._stamps[self._hop :]
        self._n = keep


class BufferTable:
    """One route's per-id buffers: at most ``max_ids``, idle ones evicted after ``ttl_s``.

    When full, the least recently seen id is evicted to make room (``on_evict("capacity")``);
    ids idle for longer than ``ttl_s`` go on :meth:`evict_idle` (``on_evict("idle")``).
    """

    def __init__(
        self,
        factory: Callable[[str], Buffer],
        *,
        max_ids: int,
        ttl_s: float,
        on_evict: Callable[[str, str], None],
    ) -> None:
        if max_ids < 1 or ttl_s <= 0:
            raise ValueError("max_ids must be >= 1 and ttl_s > 0")
        self._factory = factory
        self._max = max_ids
        self._ttl = ttl_s
        self._on_evict = on_evict
        self._items: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._items

    def get(self, device_id: str, now: float) -> Buffer:
        """The buffer of ``device_id`` (created on first use), marked as seen at ``now``."""
        entry = self._items.get(device_id)
        if entry is None:
            if len(self._items) >= self._max:
                old, _ = self._items.popitem(last=False)
                self._on_evict(old, "capacity")
            entry = [self._factory(device_id), now]
            self._items[device_id] = entry
        else:
            self._items.move_to_end(device_id)
            entry[1] = now
        return entry[0]

    def entries(self) -> Iterator[tuple[str, Buffer, float]]:
        """``(id, buffer, last seen)``, least recently seen first."""
        for device_id, (buffer, seen) in self._items.items():
            yield device_id, buffer, seen

    def remove(self, device_id: str) -> None:
        """Forget ``device_id`` (no eviction is reported)."""
        self._items.pop(device_id, None)

    def evict_idle(self, now: float) -> int:
        """Drop ids not seen for ``ttl_s``; returns how many went."""
        gone = 0
        limit = now - self._ttl
        while self._items:
            device_id, entry = next(iter(self._items.items()))
            if entry[1] >= limit:
                break
            del self._items[device_id]
            self._on_evict(device_id, "idle")
            gone += 1
        return gone
