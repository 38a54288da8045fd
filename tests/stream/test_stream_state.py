"""Buffers saved by a stop and restored by the next start cut exactly the same windows."""

from __future__ import annotations

import gzip
import json
import logging
import os

import numpy as np
import pytest

from harstream.models.har.smoothing import DeviceSmoother, SmootherParams
from harstream.stream import state
from harstream.stream.families.har import Samples, WindowBuffer
from harstream.stream.families.series import LastValues
from harstream.stream.families.text import MessageBuffer

T0 = 1_700_000_000.0


class Sink:
    def __init__(self) -> None:
        self.windows: list[tuple[list, tuple]] = []

    def emit(self, x, info, received, link=None) -> None:
        self.windows.append((x.tolist(), info))

    def drop(self, reason, n=1, detail="") -> None:
        pass


def _stream(kind: str) -> list[tuple[Samples, float]]:
    """``(message, receive time)`` pairs of one device: 30 messages of 1-17 readings at 20 Hz
    (the same span at other rates: 50 Hz is averaged into 20 Hz, 10 Hz interpolated)."""
    rng = np.random.default_rng(7)
    rates = {"on_grid": 20, "resampled_50hz": 50, "resampled_10hz": 10, "untimed": 20}
    rate = float(rates.get(kind, 50))
    out, i = [], 0
    for m in range(30):
        n = max(1, int(rng.integers(1, 18) * rate // 20))
        xyz = rng.normal(size=(n, 3)).astype(np.float32 if m % 2 else np.float64)
        times = T0 + (i + np.arange(n)) / rate
        if kind.startswith("resampled"):
            times += rng.uniform(-0.004, 0.004, n)  # jitter: readings fall between grid points
        timed = not kind.startswith("untimed")
        out.append((Samples(xyz, times if timed else None, rate), T0 + 100 + m * 0.37))
        i += n
    return out


def _round_trip(snapshot: dict, tmp_path) -> dict:
    """A snapshot as the next start reads it back from the state file."""
    path = tmp_path / "buf.state"
    saved = state.SavedState(
        "c", "p", 1.0, {"har": state.FamilyState("m", [state.DeviceState("d", 0.5, snapshot)])}
    )
    state.save(path, saved)
    loaded = state.load(path, max_age_s=1e12, client_id="c", prefix="p", now=2.0)
    assert loaded is not None and not path.exists()
    ((device, idle_s, restored),) = loaded.families["har"].devices
    assert (device, idle_s) == ("d", 0.5)
    return restored


@pytest.mark.parametrize(
    "kind", ["on_grid", "resampled_50hz", "resampled_10hz", "untimed", "untimed_50hz"]
)
def test_a_restored_window_buffer_cuts_the_same_windows(kind, tmp_path):
    messages = _stream(kind)
    whole = Sink()
    buf = WindowBuffer(whole, hop=20)
    for value, wall in messages:
        buf.push(value, wall, 0.0)
    assert len(whole.windows) >= 8
    for split in (1, 7, 12, 22, 29):
        before, after = Sink(), Sink()
        first = WindowBuffer(before, hop=20)
        for value, wall in messages[:split]:
            first.push(value, wall, 0.0)
        second = WindowBuffer(after, hop=20)
        second.restore(_round_trip(first.snapshot(), tmp_path))
        for value, wall in messages[split:]:
            second.push(value, wall, 0.0)
        assert before.windows + after.windows == whole.windows, f"split after message {split}"


def test_a_snapshot_of_another_layout_is_refused():
    buf = WindowBuffer(Sink(), hop=20)
    buf.push(Samples(np.ones((30, 3)), T0 + np.arange(30) / 20, 20.0), 0.0, 0.0)
    snapshot = buf.snapshot()
    for other in (WindowBuffer(Sink(), hop=40), WindowBuffer(Sink(), window=100)):
        with pytest.raises(ValueError, match="layout"):
            other.restore(snapshot)


def test_series_and_text_buffers_keep_their_values_and_counters(tmp_path):
    whole, before, after = Sink(), Sink(), Sink()
    values = [([float(v)], None) for v in range(12)]
    full = LastValues(whole, 5)
    for v in values:
        full.push(v, T0, 0.0)
    first = LastValues(before, 5)
    for v in values[:7]:
        first.push(v, T0, 0.0)
    second = LastValues(after, 5)
    second.restore(_round_trip(first.snapshot(), tmp_path))
    for v in values[7:]:
        second.push(v, T0, 0.0)
    assert before.windows + after.windows == whole.windows
    with pytest.raises(ValueError, match="keep 5 values"):
        LastValues(Sink(), 8).restore(first.snapshot())

    def tokens(text: str) -> np.ndarray:
        return np.zeros(len(text))

    text, sink = MessageBuffer(Sink(), tokens), Sink()
    for _ in range(3):
        text.push("hi", T0, 0.0)
    resumed = MessageBuffer(sink, tokens)
    resumed.restore(_round_trip(text.snapshot(), tmp_path))
    resumed.push("hi", T0, 0.0)
    assert [info for _x, info in sink.windows] == [4]


def _save(path, client_id="c", prefix="p", saved_at=1000.0) -> None:
    state.save(path, state.SavedState(client_id, prefix, saved_at, {"har": state.FamilyState("m")}))


def test_the_file_is_private_compressed_json_written_by_rename(tmp_path):
    path = tmp_path / "deep" / "svc.state"
    _save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == ["svc.state"]  # no temp file left behind
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert (doc["format"], doc["version"], doc["client_id"]) == ("harstream-state", 1, "c")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"saved_at": 1.0}, "more than --state-max-age 300"),
        ({"client_id": "other"}, "saved by client id 'other'"),
        ({"prefix": "q"}, "saved for prefix 'q'"),
    ],
)
def test_stale_or_foreign_state_is_discarded_and_deleted(tmp_path, caplog, change, reason):
    path = tmp_path / "svc.state"
    _save(path, **change)
    with caplog.at_level(logging.INFO, logger="harstream.stream.state"):
        assert state.load(path, max_age_s=300, client_id="c", prefix="p", now=1010.0) is None
    assert reason in caplog.text and "event=state_discarded" in caplog.text
    assert not path.exists()


BAD_ARRAY_DOC = {  # only float arrays are read back: no object arrays, no pickle
    "format": "harstream-state",
    "version": 1,
    "saved_at": 1.0,
    "client_id": "c",
    "prefix": "p",
    "families": {"har": {"model": "m", "devices": [["d", 0, {"rows": {"$array": "|O"}}]]}},
}


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04\x95 a pickle",
        gzip.compress(b'{"format": "harstream-state", "version": 99}'),
        gzip.compress(b'{"format": "harstream-state", "version": 1, "families": 3}'),
        gzip.compress(json.dumps(BAD_ARRAY_DOC).encode()),
    ],
)
def test_a_bad_file_is_discarded_with_a_reason(tmp_path, caplog, data):
    path = tmp_path / "svc.state"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="harstream.stream.state"):
        assert state.load(path, max_age_s=300, client_id="c", prefix="p") is None
    assert "event=state_discarded" in caplog.text and not path.exists()


def _smoothed_buffer(sink: Sink) -> WindowBuffer:
    return WindowBuffer(sink, hop=20, smoother=DeviceSmoother(4, SmootherParams()))


def test_the_smoother_and_segment_travel_with_the_buffer(tmp_path):
    buf = _smoothed_buffer(Sink())
    buf.push(Samples(np.ones((30, 3)), T0 + np.arange(30) / 20, 20.0), 0.0, 0.0)
    buf.push(Samples(np.ones((90, 3)), T0 + 60 + np.arange(90) / 20, 20.0), 0.0, 0.0)  # a gap
    smoother = buf._smoother
    for i, p in enumerate(([0.1, 0.6, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1])):
        smoother.update(p, T0 + i, 1)
    sink = Sink()
    restored = _smoothed_buffer(sink)
    restored.restore(_round_trip(buf.snapshot(), tmp_path))
    again = restored._smoother
    assert (again.alpha, again.label, again.since, again.segment) == (
        smoother.alpha,
        smoother.label,
        smoother.since,
        1,
    )
    restored.push(Samples(np.ones((10, 3)), T0 + 64.5 + np.arange(10) / 20, 20.0), 0.0, 0.0)
    (_x, info), *_ = sink.windows
    assert (info.segment, info.smoother) == (1, again), "the window is of the saved segment"


def test_a_snapshot_without_smoother_state_restores_with_a_fresh_one(tmp_path):
    """Buffers saved with smoothing off (or by a service that did not smooth) restore."""
    plain = WindowBuffer(Sink(), hop=20)
    plain.push(Samples(np.ones((30, 3)), T0 + np.arange(30) / 20, 20.0), 0.0, 0.0)
    snapshot = plain.snapshot()
    del snapshot["smoother"], snapshot["segment"]
    buf = _smoothed_buffer(Sink())
    buf.restore(_round_trip(snapshot, tmp_path))
    assert buf.snapshot()["rows"].shape == (30, 3)
    assert buf._smoother.label == -1 and buf._smoother.alpha == [0.25] * 4
