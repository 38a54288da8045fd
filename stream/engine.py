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

With a route ``stepper`` (the HAR CNN's incremental programs), the batch is split in two:
inputs whose id's :class:`~stream.routes.Carry` holds the state of the input just before
go through one ``step`` call with those states stacked, the others (first input of a run,
one after a dropped input, the second of an id's inputs in one batch) through one ``full``
call; both leave each input's state in its carry, in the order the inputs came.

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
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from harstream.stream.metrics import FamilyMetrics
from harstream.stream.notices import Tally
from harstream.stream.ratelimit import RATE_LIMITED, DeviceBucket
from harstream.stream.routes import Extra, Link, Route

if TYPE_CHECKING:
    from harstream.models.predictor import Stepper

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain
DropNotify = Callable[[str, str, int, str], None]  # id, reason, count since the last, detail


class Ready(NamedTuple):
    """One model input waiting for inference."""

    device: str
    x: np.ndarray
    info: Any
    received: float  # time.perf_counter() when the input's last sample arrived
    link: Link | None = None  # its place in its id's run, for a route with a stepper


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
        self._states = self._stepper_states(route)
        self._dropped = 0
        # Inputs taken by submit(), and those published or dropped on a full queue (each
        # counted by the one thread that changes it), in submission order: an input source
        # that acknowledges its messages once their windows are out compares them
        # (stream.nats_input)
        self.submitted = 0
        self._published = 0
        self._discarded = 0
        self._thread = threading.Thread(
            target=self._run, name=f"harstream-infer-{route.family}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Ready) -> None:
        """Queue an input without blocking the MQTT thread; drop the oldest when full."""
        self.submitted += 1
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
            self._discarded += 1
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
            self._discarded += 1
            self._metrics.drop("queue_full")

    @property
    def finished(self) -> int:
        """How many of the first ``submitted`` inputs are published or dropped."""
        return self._published + self._discarded

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
            self._states = self._stepper_states(swap.route)
            self.route = swap.route
            swap.taken.set()

    def _stepper_states(self, route: Route) -> np.ndarray | None:
        """The batch of states for ``route``'s stepper (None without one), and its size
        per id in the metrics."""
        stepper = route.stepper
        self._metrics.state_bytes.set(0 if stepper is None else stepper.state_bytes)
        return None if stepper is None else stepper.zero_states(route.predictor.max_batch)

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
        m = self._metrics
        route = self.route  # one batch, one model: a swap takes effect between batches
        start = time.perf_counter()
        if route.stepper is None:
            batch = self._batch
            for i, item in enumerate(items):
                batch[i] = item.x
            outputs = route.predictor.predict_outputs(batch[:n])
            # one row per input: of the single output, or a tuple of rows of every output
            rows = outputs[0] if len(outputs) == 1 else zip(*outputs, strict=True)
        else:
            rows = self._infer_steps(route.stepper, items)
        m.inference_seconds.observe(time.perf_counter() - start)
        m.batch_size.observe(n)
        m.windows.inc(n)
        self._publish_rows(route, items, rows)

    def _infer_steps(self, stepper: Stepper, items: list[Ready]) -> list[Any]:
        """Rows of outputs for ``items`` by ``stepper``: one ``step`` call for the inputs
        that continue their carry's state, one ``full`` call for the rest; then every
        input's new state into its carry, in order, so an id's later input wins."""
        stepped, full = [], []
        for i, item in enumerate(items):
            link = item.link
            # inputs are numbered from 1 and a new carry's n is -1: a first input is full;
            # a state another model computed (before a reload) is not this one's
            continues = link is not None and link.carry.n == link.n - 1
            (stepped if continues and link.carry.by is stepper else full).append(i)
        rows: list[Any] = [None] * len(items)
        states: list[np.ndarray | None] = [None] * len(items)
        batch, kept = self._batch, self._states
        for group, stepping in ((stepped, True), (full, False)):
            if not group:
                continue
            k = len(group)
            for j, i in enumerate(group):
                batch[j] = items[i].x
                if stepping:
                    kept[j] = items[i].link.carry.state  # type: ignore[union-attr]
            run = stepper.step(batch[:k], kept[:k]) if stepping else stepper.full(batch[:k])
            *parts, new_states = run
            group_rows = parts[0] if len(parts) == 1 else list(zip(*parts, strict=True))
            for j, i in enumerate(group):
                rows[i] = group_rows[j]
                states[i] = new_states[j]
        self._metrics.stepped.inc(len(stepped))
        for item, state in zip(items, states, strict=True):
            link = item.link
            if link is None:
                continue
            carry = link.carry
            if carry.state is None or carry.state.shape != state.shape:  # type: ignore[union-attr]
                carry.state = state.copy()  # type: ignore[union-attr]
            else:
                carry.state[...] = state  # its own array: a view would pin the whole batch
            carry.n, carry.by = link.n, stepper
        return rows

    def _publish_rows(self, route: Route, items: list[Ready], rows: Any) -> None:
        m = self._metrics
        n = len(items)
        encode, predictor, publish = route.encode, route.predictor, self._publish
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
        self._published += n


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

    def emit(self, x: np.ndarray, info: Any, received: float, link: Link | None = None) -> None:
        if self._admit is not None and not self._admit(received):
            self._metrics.drop(RATE_LIMITED)
            return
        self._submit(Ready(self._device, x, info, received, link))

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
