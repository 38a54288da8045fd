"""The inference worker: a bounded ready queue, batching across ids, one jitted call, publish.

One :class:`InferenceWorker` serves one route. Buffers on the MQTT thread hand ready
inputs to it through a :class:`DeviceSink`; the worker waits for the first input and takes
everything already queued (up to ``max_batch``). While one batch runs, the next one forms
in the queue, so batches grow by themselves as load rises and a quiet service adds no
wait. ``max_wait_s`` (default 0) lets a forming batch (more than one input queued) also
wait that long for more: fewer, larger calls for some latency. Measured on 2 cores with
bursts of windows (``bench e2e``), waiting 2 ms cost more latency than it saved CPU.
The batch is stacked into a preallocated array, run through ``predictor.predict_outputs``
once (pre-compiled power-of-two buckets) and one encoded result per input is published,
followed by any extra messages the encoder returned with it (:class:`stream.routes.Extra`).

Before the queue, each id's :class:`DeviceSink` holds its token bucket
(:mod:`stream.ratelimit`): an id that sends more than its share loses its own excess
(``harstream_drops_total{reason="rate_limited"}``), not the other ids' windows. When the
queue is full nonetheless the OLDEST waiting input is dropped (its prediction would be the
stalest), counted as ``harstream_drops_total{reason="queue_full"}`` and logged.

A model reload (:meth:`InferenceWorker.swap`) queues the new route behind the inputs
already waiting: they finish with the model that cut them, the batch ends there, and every
later input runs with the new one, so no input is lost or run half with each.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from harstream.stream.metrics import FamilyMetrics
from harstream.stream.notices import Tally
from harstream.stream.ratelimit import RATE_LIMITED, DeviceBucket
from harstream.stream.routes import Extra, Route

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain
DropNotify = Callable[[str, str, int, str], None]  # id, reason, count since the last, detail


class Ready(NamedTuple):
    """One model input waiting for inference."""

    device: str
    x: np.ndarray
    info: Any
    received: float  # time.perf_counter() when the input's last sample arrived


_STOP = object()


class _Swap:
    """A queued model swap: the route the worker takes once every input before it is done,
    unless the caller gave up waiting first (``cancelled``)."""

    __slots__ = ("route", "taken", "cancelled", "lock")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.taken = threading.Event()
        self.cancelled = False
        self.lock = threading.Lock()


class InferenceWorker:
    """Batches one route's ready inputs from all ids into single predictor calls."""

    def __init__(
        self,
        route: Route,
        publish: Publish,
        metrics: FamilyMetrics,
        *,
        prefix: str,
        max_wait_s: float = 0.0,
        queue_size: int = 4096,
    ) -> None:
        if queue_size < 1 or max_wait_s < 0:
            raise ValueError("queue_size must be >= 1 and max_wait_s >= 0")
        self.route = route
        self._publish = publish
        self._metrics = metrics
        self._out_prefix = prefix + "/"
        self._out_suffix = "/" + route.out_suffix
        self._max_wait = max_wait_s
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        predictor = route.predictor
        self._max_batch = predictor.max_batch
        self._batch = np.zeros((self._max_batch, *predictor.item_shape), predictor.dtype)
        self._dropped = 0
        self._thread = threading.Thread(
            target=self._run, name=f"harstream-infer-{route.family}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Ready) -> None:
        """Queue an input without blocking the MQTT thread; drop the oldest when full."""
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
        self._dropped += 1
        self._metrics.drop("queue_full")
        if self._dropped == 1 or self._dropped % 1000 == 0:
            log.warning(
                "event=queue_full family=%s dropped_total=%d: inference cannot keep up; "
                "dropping the oldest waiting windows (raise --max-batch or add capacity)",
                self.route.family,
                self._dropped,
            )
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # another producer refilled it; this item is the one dropped
            self._metrics.drop("queue_full")

    def stop(self, timeout: float = 30.0) -> bool:
        """Finish every queued input, publish its result, then end the thread; returns
        False when that did not happen within ``timeout`` seconds."""
        if not self._thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def swap(self, route: Route, timeout: float = 30.0) -> bool:
        """Serve ``route`` (the same family, a new model) from the next batch on, once every
        input queued now has run with the current one; returns once the worker has taken
        it (True), or False when it did not within ``timeout`` seconds (a batch stuck in
        the model): the current route stays then.

        The caller keeps inputs from being submitted meanwhile (the service holds the MQTT
        thread), so that the queue only empties and the swap cannot be dropped as the
        oldest input of a full queue.
        """
        if not self._thread.is_alive():
            return False
        swap = _Swap(route)
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(swap, timeout=timeout)
        except queue.Full:
            return False
        if swap.taken.wait(max(0.0, deadline - time.monotonic())):
            return True
        with swap.lock:
            swap.cancelled = not swap.taken.is_set()
            return not swap.cancelled

    def _take(self, swap: _Swap) -> None:
        with swap.lock:
            if swap.cancelled:
                return
            predictor = swap.route.predictor
            shape = (predictor.max_batch, *predictor.item_shape)
            if self._batch.shape != shape or self._batch.dtype != predictor.dtype:
                self._batch = np.zeros(shape, predictor.dtype)
            self._max_batch = predictor.max_batch
            self.route = swap.route
            swap.taken.set()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()
            if item is _STOP:
                return
            if type(item) is _Swap:
                self._take(item)
                continue
            items = [item]
            stopping = False
            swap = None
            deadline = time.perf_counter() + self._max_wait
            while len(items) < self._max_batch:
                try:
                    item = get_nowait()
                except queue.Empty:
                    if len(items) == 1:
                        break  # a lone input, no burst under way: run it at once
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stopping = True
                    break
                if type(item) is _Swap:
                    swap = item
                    break
                items.append(item)
            try:
                self._infer(items)
            except Exception:  # a broken batch must not kill the worker
                log.exception("event=inference_failed family=%s", self.route.family)
                self._metrics.error("inference")
            if swap is not None:
                self._take(swap)
            if stopping:
                return

    def _infer(self, items: list[Ready]) -> None:
        n = len(items)
        batch = self._batch
        for i, item in enumerate(items):
            batch[i] = item.x
        m = self._metrics
        route = self.route  # one batch, one model: a swap takes effect between batches
        start = time.perf_counter()
        outputs = route.predictor.predict_outputs(batch[:n])
        m.inference_seconds.observe(time.perf_counter() - start)
        m.batch_size.observe(n)
        m.windows.inc(n)
        encode, predictor, publish = route.encode, route.predictor, self._publish
        # one row per input: of the single output, or a tuple of rows of every output
        rows = outputs[0] if len(outputs) == 1 else zip(*outputs, strict=True)
        for item, row in zip(items, rows, strict=True):
            latency = time.perf_counter() - item.received
            out = encode(item.device, item.info, row, predictor, latency * 1000.0)
            extras: Sequence[Extra] = ()
            if type(out) is not bytes:
                out, extras = out
            base = self._out_prefix + item.device
            publish(base + self._out_suffix, out, False)
            for extra in extras:
                publish(f"{base}/{extra.suffix}", extra.payload, extra.retain)
            m.latency_seconds.observe(latency)
        m.predictions.inc(n)


class DeviceSink:
    """What a device's buffer sees of the engine: ``emit`` ready inputs, report ``drop``s.

    With a ``bucket`` (:class:`stream.ratelimit.DeviceBucket`), an input the id has no token
    for is dropped here, before the queue, and counted as ``rate_limited``. The buffer's own
    drops (``drop``: HAR's ``gap``, ``duplicate``, ``out_of_order``) are the id's doing:
    with ``notify`` they are also told to the id, at most once per reason per
    :data:`~stream.notices.NOTICE_EVERY_S` (``notify(id, reason, count since the last
    notice, detail)``).
    """

    __slots__ = ("_device", "_submit", "_metrics", "_admit", "_notify", "_tallies")

    def __init__(
        self,
        device: str,
        worker: InferenceWorker,
        metrics: FamilyMetrics,
        bucket: DeviceBucket | None = None,
        notify: DropNotify | None = None,
    ) -> None:
        self._device = device
        self._submit = worker.submit
        self._metrics = metrics
        self._admit = None if bucket is None else bucket.admit
        self._notify = notify
        self._tallies: dict[str, Tally] = {}

    def emit(self, x: np.ndarray, info: Any, received: float) -> None:
        if self._admit is not None and not self._admit(received):
            self._metrics.drop(RATE_LIMITED)
            return
        self._submit(Ready(self._device, x, info, received))

    def drop(self, reason: str, n: int = 1, detail: str = "") -> None:
        self._metrics.drop(reason, n)
        if self._notify is None:
            return
        tally = self._tallies.get(reason)
        if tally is None:
            tally = self._tallies[reason] = Tally()
        count = tally.add(n, time.perf_counter())
        if count:
            self._notify(self._device, reason, count, detail)
