"""Incremental inference in the service: a window that continues its device's previous one
is stepped from that window's state, every other one computed in full, with the same answers.

The pipeline tests run the HAR route's own buffers, table and inference worker (no broker):
every published probability is compared with the predictor's full computation of the window
the buffer cut, through gaps, timed/untimed restarts, resampling, evictions, dropped windows
and several windows of one device in one batch. The last test runs two services on a broker.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import weakref
from typing import Any

import numpy as np
import pytest
from bus_client import T0

from harstream.stream.config import ServeConfig
from harstream.stream.devices import BufferTable
from harstream.stream.engine import DeviceSink, InferenceWorker
from harstream.stream.families import har
from harstream.stream.families.har import Samples
from harstream.stream.metrics import ServiceMetrics
from harstream.stream.routes import Route

ATOL = 1e-5


class Recorder:
    """A sink between a buffer and the engine that keeps each window it passes on."""

    def __init__(self, device: str, inner: DeviceSink, windows: list) -> None:
        self._device, self._inner, self._windows = device, inner, windows

    def emit(self, x: np.ndarray, info: Any, received: float, link: Any = None) -> None:
        self._windows.append(((self._device, info.seq, info.start, info.end), x))
        self._inner.emit(x, info, received, link)

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None:
        self._inner.drop(reason, n, detail)


class Pipeline:
    """The HAR route for ``hop`` with its worker and device table; ``publish`` records."""

    def __init__(self, predictor: Any, hop: int, queue_size: int = 4096) -> None:
        config = ServeConfig(hop=hop, smoothing="off", max_batch=predictor.max_batch)
        self.answers: list[tuple[tuple, str, np.ndarray]] = []
        self.route = self.recording(har.build(config, predictor))
        self.metrics = ServiceMetrics()
        self.fm = self.metrics.family("har")
        self.published: list[dict] = []
        self.windows: list[tuple[tuple, np.ndarray]] = []
        self.evicted: list[str] = []
        self.worker = InferenceWorker(
            self.route,
            lambda topic, payload, retain: self.published.append(json.loads(payload)),
            self.fm,
            prefix="p",
            queue_size=queue_size,
        )
        self.table = BufferTable(
            self._new, max_ids=100, ttl_s=5.0, on_evict=lambda d, r: self.evicted.append(d)
        )

    def recording(self, route: Route) -> Route:
        """``route`` with an encoder that also keeps each window's probabilities as the
        model computed them (the published ones are rounded to 4 decimals)."""

        def encode(device: str, info: Any, out: Any, p: Any, latency_ms: float) -> Any:
            key = (device, info.seq, info.start, info.end)
            self.answers.append((key, p.tag, np.array(out[0])))
            return route.encode(device, info, out, p, latency_ms)

        return dataclasses.replace(route, encode=encode)

    def _new(self, device: str) -> Any:
        sink = Recorder(device, DeviceSink(device, self.worker, self.fm), self.windows)
        return self.route.new_buffer(device, sink)

    def push(self, device: str, xyz: np.ndarray, times: np.ndarray | None, now: float) -> None:
        self.table.get(device, now).push(Samples(xyz, times, 20.0), now, time.perf_counter())

    def check(self, *predictors: Any) -> int:
        """Every published window's probabilities against the full computation of the
        window its buffer cut, by the model that answered; returns how many windows were
        stepped."""
        self.worker.stop()
        by_tag = {p.tag: p for p in predictors}
        cut = dict(self.windows)
        assert len(cut) == len(self.windows)  # (id, seq, start, end) names one window
        assert len(self.published) == len(self.answers) == len(cut)
        for key, tag, got in self.answers:
            full = by_tag[tag].predict(cut.pop(key))[0]
            np.testing.assert_allclose(got, full, atol=ATOL, err_msg=str(key))
        return int(self.metrics.value("harstream_windows_incremental_total", family="har"))


def stream(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0.0, 3.0, (n, 3))
    xyz[:, 2] += 9.8
    return xyz


def feed(pipe: Pipeline, hop: int) -> int:
    """Five devices through every kind of break; returns how many windows were cut."""
    per_message = 7  # not a divisor of any hop: windows complete mid-message
    a, b, c, e = (stream(400, seed) for seed in range(4))
    d = stream(1000, 4)
    t = T0 + np.arange(400) / 20.0
    for start in range(0, 400, per_message):
        part = slice(start, start + per_message)
        now = T0 + start / 20.0
        pipe.table.evict_idle(now)
        pipe.push("steady", a[part], t[part], now)
        # a 3 s gap after sample 200: the partial window is discarded and a new run starts
        pipe.push("gappy", b[part], t[part] + (3.0 if start >= 200 else 0.0), now)
        # untimed from sample 150 to 250: a restart each way
        pipe.push("switch", c[part], None if 150 <= start < 250 else t[part], now)
        # 50 Hz timed readings, resampled onto the 20 Hz grid
        fast = slice(int(start * 2.5), int((start + per_message) * 2.5))
        pipe.push("fifty", d[fast], T0 + np.arange(1000)[fast] / 50.0, now)
        # silent from sample 100 to 220 (6 s): evicted as idle, then a new buffer whose
        # window numbers start again at 1 while its readings continue the old ones
        if not 100 <= start < 220:
            pipe.push("evicted", e[part], t[part], now)
    assert pipe.evicted == ["evicted"] and "evicted" in pipe.table
    return len(pipe.windows)


@pytest.mark.parametrize("hop", [10, 20, 40, 60])
def test_stepped_windows_equal_full_ones_through_gaps_restarts_and_evictions(har_predictor, hop):
    pipe = Pipeline(har_predictor, hop)
    pipe.worker.start()
    windows = feed(pipe, hop)
    stepped = pipe.check(har_predictor)
    # each device's first window after a break is computed in full: steady 1, gappy 2,
    # switch 3, fifty 1, evicted 2, plus any window that shared a batch with its predecessor
    assert 0 < stepped <= windows - 9


def test_windows_queued_together_are_right_whatever_the_batch(har_predictor):
    """With the worker started late, a device's consecutive windows share batches: the
    first of them steps, the next ones are computed in full and each leaves its state."""
    pipe = Pipeline(har_predictor, 20)
    windows = feed(pipe, 20)
    pipe.worker.start()
    stepped = pipe.check(har_predictor)
    assert stepped < windows - 9


def test_a_dropped_window_makes_the_next_one_full(har_predictor):
    pipe = Pipeline(har_predictor, 20, queue_size=3)
    feed(pipe, 20)  # the worker is not running: all but the last 3 windows are dropped
    dropped = pipe.metrics.value("harstream_drops_total", family="har", reason="queue_full")
    assert dropped > 0
    del pipe.windows[:-3]
    pipe.worker.start()
    assert pipe.check(har_predictor) == 0


def test_after_a_model_reload_no_window_steps_from_the_old_models_state(har_predictor, tmp_path):
    from harstream.families import load_predictor
    from harstream.models.har import checkpoint, network

    path = checkpoint.save(
        tmp_path / "other",
        "har-cnn",
        {"num_classes": 6},
        network.init_params(network.HarCNN(num_classes=6), seed=4),
        {**har_predictor.meta, "version": "other"},
    )
    other = load_predictor(path, family="har", max_batch=har_predictor.max_batch)
    pipe = Pipeline(har_predictor, 20)
    pipe.worker.start()
    xyz = stream(400, 9)
    t = T0 + np.arange(400) / 20.0
    for start in range(0, 400, 5):
        if start == 200:
            config = ServeConfig(hop=20, smoothing="off", max_batch=other.max_batch)
            assert pipe.worker.swap(pipe.recording(har.build(config, other)))
        for device in ("a", "b"):
            pipe.push(device, xyz[start : start + 5], t[start : start + 5], T0 + start / 20.0)
    assert pipe.check(har_predictor, other) > 0
    assert {doc["model"] for doc in pipe.published} == {har_predictor.tag, other.tag}


def test_a_devices_state_is_one_fixed_array_and_goes_with_its_buffer(har_predictor):
    pipe = Pipeline(har_predictor, 20)
    pipe.worker.start()
    feed(pipe, 20)
    pipe.worker.stop()
    stepper = pipe.route.stepper
    assert pipe.metrics.value("harstream_incremental_state_bytes", family="har") == 16_800
    states = {}
    for device, buffer, _ in pipe.table.entries():
        state = buffer._carry.state
        # its own array of the documented size, not a view pinning a whole batch's output
        assert state.nbytes == stepper.state_bytes == 16_800 and state.base is None, device
        states[device] = weakref.ref(state)
    del state, buffer
    pipe.table.remove("steady")
    gc.collect()
    assert states["steady"]() is None and states["gappy"]() is not None


def test_no_incremental_and_other_models_compute_every_window_in_full(har_predictor):
    config = ServeConfig(hop=20, incremental=False, max_batch=har_predictor.max_batch)
    assert har.build(config, har_predictor).stepper is None
    config = ServeConfig(hop=70, max_batch=har_predictor.max_batch)
    assert har.build(config, har_predictor).stepper is None


def test_the_service_answers_the_same_with_and_without_incremental(serve, device, prefix):
    rng = np.random.default_rng(7)
    readings = {f"d{i}": rng.normal(0.0, 3.0, (200, 3)).tolist() for i in range(3)}
    answers = []
    for incremental in (True, False):
        service = serve(incremental=incremental, smoothing="off")
        tag = "inc" if incremental else "full"
        for name, rows in readings.items():
            for start in range(0, 200, 10):
                part = [
                    [T0 + (start + i) / 20.0, *r] for i, r in enumerate(rows[start : start + 10])
                ]
                device.publish(f"{tag}-{name}", {"samples": part})
        got = {name: device.wait_for(f"{tag}-{name}", 7) for name in readings}
        stepped = service.metrics.value("harstream_windows_incremental_total", family="har")
        assert (stepped > 0) == incremental
        service.stop()
        answers.append(got)
    for name in readings:
        on, off = answers[0][name], answers[1][name]
        assert [p["seq"] for p in on] == [p["seq"] for p in off] == list(range(1, 8))
        for a, b in zip(on, off, strict=True):
            assert a["window"] == b["window"]
            # published with 4 decimals: float32 rounding may move the last one by one unit
            assert list(a["probs"].values()) == pytest.approx(list(b["probs"].values()), abs=1e-4)
