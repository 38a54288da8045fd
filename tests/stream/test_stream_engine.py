"""The inference worker: batching across ids, the bounded queue's drop policy, draining on stop."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
from bus_client import WAIT

from harstream.stream.engine import DeviceSink, InferenceWorker
from harstream.stream.metrics import ServiceMetrics
from harstream.stream.routes import Extra, Route


class CountingPredictor:
    """Duck-typed Predictor: row sums as the 'output', and a record of batch sizes."""

    max_batch = 8
    item_shape = (4, 3)
    dtype = np.float32
    tag = "sum@1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_outputs(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        self.calls.append(len(x))
        return (x.sum(axis=(1, 2))[:, None],)


def _encode(device, info, out, p, latency) -> bytes:
    return f"{device}:{info}:{out[0]:g}".encode()


def make_worker(queue_size: int = 64, max_wait_s: float = 0.002, encode=_encode, retained=None):
    """A worker whose publishes land in ``published`` (and the retained ones also in
    ``retained``, when given)."""
    published: list[tuple[str, bytes]] = []

    def publish(topic: str, payload: bytes, retain: bool) -> None:
        published.append((topic, payload))
        if retain and retained is not None:
            retained.append(topic)

    predictor = CountingPredictor()
    route = Route(
        family="sum",
        suffix="in",
        out_suffix="out",
        decode=lambda payload, content_type: payload,
        new_buffer=lambda device, sink: None,
        predictor=predictor,
        encode=encode,
    )
    metrics = ServiceMetrics()
    fm = metrics.family("sum")
    worker = InferenceWorker(
        route,
        publish,
        fm,
        prefix="pre",
        queue_size=queue_size,
        max_wait_s=max_wait_s,
    )
    return worker, predictor, published, metrics, fm


def test_queued_inputs_from_many_ids_run_as_one_batch_and_are_published():
    worker, predictor, published, metrics, fm = make_worker()
    for i in range(5):
        DeviceSink(f"d{i}", worker, fm).emit(np.full((4, 3), i, np.float32), i, 0.0)
    worker.start()
    worker.stop()
    assert predictor.calls == [5]
    assert published == [(f"pre/d{i}/out", f"d{i}:{i}:{12 * i}".encode()) for i in range(5)]
    assert metrics.value("harstream_predictions_total", family="sum") == 5
    assert metrics.value("harstream_inference_batch_size_sum", family="sum") == 5


def test_an_encoder_may_add_extra_messages_published_after_its_result():
    def encode(device, info, out, p, latency):
        main = _encode(device, info, out, p, latency)
        if info % 2:
            return main
        return main, [Extra("state", b"even", retain=True), Extra("note", b"n")]

    retained: list[str] = []
    worker, _, published, _, fm = make_worker(encode=encode, retained=retained)
    for i in range(3):
        DeviceSink("d", worker, fm).emit(np.zeros((4, 3), np.float32), i, 0.0)
    worker.start()
    worker.stop()
    assert published == [
        ("pre/d/out", b"d:0:0"),
        ("pre/d/state", b"even"),
        ("pre/d/note", b"n"),
        ("pre/d/out", b"d:1:0"),
        ("pre/d/out", b"d:2:0"),
        ("pre/d/state", b"even"),
        ("pre/d/note", b"n"),
    ]
    assert retained == ["pre/d/state", "pre/d/state"]


def test_batches_are_capped_at_max_batch():
    worker, predictor, published, _, fm = make_worker()
    for i in range(19):
        DeviceSink("d", worker, fm).emit(np.zeros((4, 3), np.float32), i, 0.0)
    worker.start()
    worker.stop()
    assert predictor.calls == [8, 8, 3] and len(published) == 19


def test_full_queue_drops_the_oldest_and_counts_it():
    worker, _, published, metrics, fm = make_worker(queue_size=2)
    sink = DeviceSink("d", worker, fm)
    for i in range(5):
        sink.emit(np.zeros((4, 3), np.float32), i, 0.0)
    assert metrics.value("harstream_drops_total", family="sum", reason="queue_full") == 3
    worker.start()
    worker.stop()
    assert [p for _, p in published] == [b"d:3:0", b"d:4:0"]


def test_a_lone_input_does_not_wait_for_company():
    worker, predictor, published, _, fm = make_worker(max_wait_s=600.0)
    worker.start()
    DeviceSink("alone", worker, fm).emit(np.ones((4, 3), np.float32), 0, 0.0)
    deadline = time.monotonic() + 30
    while not published and time.monotonic() < deadline:
        time.sleep(0.01)
    assert published == [("pre/alone/out", b"alone:0:12")] and predictor.calls == [1]
    worker.stop()


def test_a_swap_runs_every_input_queued_before_it_with_the_old_model():
    worker, old, published, _, fm = make_worker(max_wait_s=0.05)  # batches would span it
    sink = DeviceSink("d", worker, fm)
    for i in range(3):
        sink.emit(np.full((4, 3), 1.0, np.float32), i, 0.0)
    new = CountingPredictor()
    new.tag = "sum@2"

    def encode_new(device, info, out, p, latency) -> bytes:
        return f"{device}:{info}:{p.tag}".encode()

    route = replace(worker.route, predictor=new, encode=encode_new)
    worker.start()
    assert worker.swap(route, timeout=10.0)
    for i in range(3, 5):
        sink.emit(np.full((4, 3), 1.0, np.float32), i, 0.0)
    assert worker.stop()
    assert [payload for _, payload in published] == [
        b"d:0:12", b"d:1:12", b"d:2:12", b"d:3:sum@2", b"d:4:sum@2"
    ]  # fmt: skip
    assert sum(old.calls) == 3 and sum(new.calls) == 2
    assert worker.route is route


def test_a_swap_the_worker_does_not_take_in_time_is_cancelled():
    worker, predictor, published, _, fm = make_worker()
    release = threading.Event()
    forward = predictor.predict_outputs
    predictor.predict_outputs = lambda x: release.wait(WAIT) and forward(x)  # a stuck batch
    current = worker.route
    sink = DeviceSink("d", worker, fm)
    sink.emit(np.zeros((4, 3), np.float32), 0, 0.0)
    worker.start()
    assert not worker.swap(replace(current, family="late"), timeout=0.2)
    release.set()
    sink.emit(np.zeros((4, 3), np.float32), 1, 0.0)
    assert worker.stop()
    assert worker.route is current, "a cancelled swap must not be taken later"
    assert len(published) == 2
