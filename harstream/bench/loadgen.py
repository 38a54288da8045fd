"""Load generator for ``bench e2e``: processes that stream simulated devices and time predictions.

Each process owns a share of the devices. It subscribes to their prediction topics, then
publishes every device's readings on a fixed schedule (``rate_hz`` samples per second,
``samples_per_message`` per message, devices evenly staggered over one message period, so
the load is smooth rather than bursty) and records, per message, when it was published.
A prediction names its window's last sample (``window.end`` is that sample's timestamp as
sent), which identifies the message that carried it: the window's latency is the time
from publishing that message to receiving the prediction, both on this process's clock.

Before its live stream, each device sends a backdated "prefill" of up to ``80 - K``
samples, so that its first window completes within its first second of live messages
instead of after four seconds of warm-up; every measured window is completed by a live,
on-schedule message. Prefill lengths differ between devices (in steps of K) so that, as
with real devices, window completions are spread over the hop rather than all falling in
the same instant of every second.

Runs in child processes started with ``spawn`` (no JAX here: the service runs elsewhere).
Payloads are encoded by ``replay.publisher`` (the format devices use); the MQTT client is
the lean :mod:`harstream.bench.mqtt_wire`, so that the generator leaves the cores to the
broker and the service it measures.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

WINDOW = 80
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LoadSpec:
    """What one publisher process sends (``broker`` is a ``stream.connection.BrokerConfig``)."""

    broker: Any
    prefix: str
    devices: tuple[str, ...]
    rate_hz: float = 20.0
    samples_per_message: int = 1
    duration_s: float = 10.0
    hop: int = 20
    qos: int = 1
    drain_s: float = 3.0
    shard: tuple[int, int] = (0, 1)  # (this process, processes): interleaves device phases
    # QoS of the subscriptions to predictions (None: ``qos``). nats-server's MQTT listener
    # gives one session's QoS 1 subscriptions 65,535 packet ids to share (each holds
    # max_ack_pending of them), too few for one subscription per device at this scale
    subscribe_qos: int | None = None

    def phase(self, j: int) -> float:
        """Where device ``j`` of this process sits among all devices, in [0, 1)."""
        index, count = self.shard
        return (j * count + index) / (len(self.devices) * count)

    def prefill(self, j: int) -> int:
        """Backdated samples device ``j`` sends first: its first window ends on a live message
        within the first ``hop`` samples, at a point set by the device's phase."""
        k = self.samples_per_message
        shift = int(self.phase(j) * self.hop) // k * k
        return max(0, WINDOW - k - shift)

    @property
    def live_messages(self) -> int:
        """Messages per device during the timed stream."""
        return max(1, int(self.duration_s * self.rate_hz) // self.samples_per_message)

    def windows(self, j: int) -> int:
        """Windows the service should classify for device ``j`` (``hop`` samples apart)."""
        total = self.prefill(j) + self.live_messages * self.samples_per_message
        return 0 if total < WINDOW else (total - WINDOW) // self.hop + 1


@dataclass
class LoadResult:
    """What one process measured; plain data, sent back to the parent."""

    latencies_s: list[float] = field(default_factory=list)
    service_latencies_ms: list[float] = field(default_factory=list)  # as the service reports
    windows_expected: int = 0
    windows_received: int = 0
    duplicates: int = 0
    unmatched: int = 0
    errors: list[str] = field(default_factory=list)
    messages: int = 0
    samples: int = 0
    first_s: float = 0.0  # first and last live publish, seconds after the common start
    last_s: float = 0.0
    elapsed_s: float = 0.0  # start to the end of the drain (the interval of ``cpu_s``)
    max_lag_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time while streaming and draining


def run_load(
    specs: list[LoadSpec],
    *,
    on_start: Callable[[], None] | None = None,
    timeout_s: float | None = None,
) -> list[LoadResult]:
    """Run one publisher process per spec, started together; their results.

    Every process connects and subscribes first; the common start time is sent once all
    are ready, so the schedule does not include process start-up. ``on_start`` runs in
    this process at that start time (e.g. to read the service's CPU counter).
    """
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    try:
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(spec, child), daemon=True)
            proc.start()
            child.close()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            _expect(pipe, "ready", READY_TIMEOUT_S)
        start = time.time() + 0.3
        for pipe in pipes:
            pipe.send(start)
        if on_start is not None:
            time.sleep(max(0.0, start - time.time()))
            on_start()
        longest = max(s.duration_s + s.drain_s for s in specs)
        limit = timeout_s if timeout_s is not None else longest + 60.0
        results = [_expect(pipe, "done", limit) for pipe in pipes]
        return results
    finally:
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)


def _expect(pipe: Any, what: str, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"a load-generator process did not report {what!r} within {timeout:g} s")
    kind, value = pipe.recv()
    if kind == "error":
        raise RuntimeError(f"a load-generator process failed:\n{value}")
    return value


def _process_main(spec: LoadSpec, pipe: Any) -> None:
    try:
        _Generator(spec, pipe).run()
    except BaseException:
        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class _Generator:
    """The schedule, the publishing loop and the prediction bookkeeping of one process.

    Every PUBLISH packet is encoded before the start, so that the timed loop does nothing
    but wait for the next due time and write every packet that is due in one ``sendall``.
    Device clocks start at this process's start-up time (a device's clock offset is its
    own business in the contract).
    """

    def __init__(self, spec: LoadSpec, pipe: Any) -> None:
        self.spec = spec
        self.pipe = pipe
        self.index = {device: j for j, device in enumerate(spec.devices)}
        self.received: list[tuple[str, bytes, float]] = []
        self.error_payloads: list[bytes] = []
        n, k = len(spec.devices), spec.samples_per_message
        self.published = np.full((n, spec.live_messages + 1), np.nan)  # column 0: prefill
        # each device's first live sample (on its own clock), staggered over one message period
        self.clocks = time.time() + np.array([spec.phase(j) for j in range(n)]) * k / spec.rate_hz
        rng = np.random.default_rng(zlib.crc32(spec.devices[0].encode()))
        self.readings = rng.normal(0.0, 4.0, size=(4096, 3)).astype(np.float32)

    def on_publish(self, topic_name: str, payload: bytes, received: float) -> None:
        if topic_name.endswith("/errors"):
            self.error_payloads.append(payload)
        else:
            self.received.append((topic_name, payload, received))

    def schedule(self) -> list[tuple[float, int, int, bytes]]:
        """``(due seconds after the start, device, column, PUBLISH packet)`` in due order."""
        from harstream.bench.mqtt_wire import publish_packet
        from harstream.replay.pacing import Chunk
        from harstream.replay.publisher import encode_chunk
        from harstream.stream.contract import topic

        spec = self.spec
        k, rate = spec.samples_per_message, spec.rate_hz
        events = []
        for j, device in enumerate(spec.devices):
            accel = topic(spec.prefix, device, "accel")
            first = spec.phase(j) * k / rate  # its first live sample, after the start
            prefill = spec.prefill(j)
            blocks = [(-prefill, prefill, 0)] if prefill else []
            blocks += [(m * k, k, m + 1) for m in range(spec.live_messages)]
            for lo, count, column in blocks:
                idx = np.arange(lo, lo + count)
                rows = self.readings[(idx + j * 7) % len(self.readings)]
                chunk = Chunk(device, 0.0, self.clocks[j] + idx / rate, rows, None, rate, True)
                due = first + (lo + count - 1) / rate
                events.append((due, j, column, accel, encode_chunk(chunk)))
        events.sort(key=lambda e: e[0])
        return [
            (due, j, column, publish_packet(accel, payload, spec.qos, i % 65535 + 1))
            for i, (due, j, column, accel, payload) in enumerate(events)
        ]

    def run(self) -> None:
        from harstream.bench.mqtt_wire import WireClient
        from harstream.stream.contract import topic

        spec = self.spec
        events = self.schedule()
        subscriptions = [
            topic(spec.prefix, d, s) for d in spec.devices for s in ("activity", "errors")
        ]
        client = WireClient(spec.broker, self.on_publish)
        try:
            client.subscribe(
                subscriptions, spec.qos if spec.subscribe_qos is None else spec.subscribe_qos
            )
            self.pipe.send(("ready", None))
            start_unix = self.pipe.recv()
            result = self._stream(client, events, start_unix)
        finally:
            client.close()
        self.pipe.send(("done", result))

    def _stream(self, client: Any, events: list, start_unix: float) -> LoadResult:
        spec = self.spec
        start = start_unix + time.perf_counter() - time.time()
        cpu0 = time.process_time()
        published = self.published
        perf_counter, sleep = time.perf_counter, time.sleep
        max_lag, sent, i = 0.0, 0, 0
        while i < len(events):
            now = perf_counter() - start
            if events[i][0] > now:
                sleep(events[i][0] - now)
                continue
            max_lag = max(max_lag, now - events[i][0])
            due_now = i
            while i < len(events) and events[i][0] <= now:
                i += 1
            sent_at = perf_counter()
            client.send(b"".join(packet for _, _, _, packet in events[due_now:i]))
            for _, j, column, _ in events[due_now:i]:
                published[j, column] = sent_at
                sent += column > 0
        last = perf_counter()
        expected = sum(spec.windows(j) for j in range(len(spec.devices)))
        deadline = last + spec.drain_s
        while len(self.received) < expected and perf_counter() < deadline:
            sleep(0.02)
        result = self._match(self.clocks)
        result.windows_expected = expected
        result.messages = sent
        result.samples = sent * spec.samples_per_message
        live = self.published[:, 1:]
        result.first_s = float(np.nanmin(live)) - start
        result.last_s = float(np.nanmax(live)) - start
        result.elapsed_s = perf_counter() - start
        result.max_lag_s = max_lag
        result.cpu_s = time.process_time() - cpu0  # includes matching, a small share
        return result

    def _match(self, starts: np.ndarray) -> LoadResult:
        """Latency of each prediction: receive time minus the publish time of its last sample."""
        import orjson

        spec = self.spec
        k, rate = spec.samples_per_message, spec.rate_hz
        result = LoadResult(
            errors=[p.decode(errors="replace")[:300] for p in self.error_payloads[:5]]
        )
        seen: set[tuple[int, int]] = set()
        for topic_name, payload, received in self.received:
            device = topic_name.rsplit("/", 2)[-2]
            j = self.index.get(device)
            try:
                doc = orjson.loads(payload)
                end = float(doc["window"]["end"])
                inside = float(doc["latency_ms"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                j = None
            if j is None:
                result.unmatched += 1
                continue
            sample = round((end - starts[j]) * rate)
            column = 0 if sample < 0 else sample // k + 1
            if column >= self.published.shape[1] or sample < -spec.prefill(j):
                result.unmatched += 1
                continue
            if (j, sample) in seen:
                result.duplicates += 1
                continue
            seen.add((j, sample))
            result.latencies_s.append(received - float(self.published[j, column]))
            result.service_latencies_ms.append(inside)
        result.windows_received = len(seen)
        return result


def split_devices(spec: LoadSpec, processes: int) -> list[LoadSpec]:
    """``spec`` split into up to ``processes`` specs with disjoint devices and client ids."""
    processes = max(1, min(processes, len(spec.devices)))
    return [
        replace(
            spec,
            devices=spec.devices[p::processes],
            shard=(p, processes),
            broker=replace(spec.broker, client_id=f"{spec.broker.client_id}-{p}"),
        )
        for p in range(processes)
    ]
