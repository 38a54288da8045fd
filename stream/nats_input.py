"""``harstream serve --nats``: readings from a partitioned JetStream stream, leases for who
consumes which partition, buffers handed over when a partition changes hands.

The devices publish MQTT to nats-server's MQTT listener; its subject mapping
(``examples/nats/nats-server.conf``) turns ``<prefix>/<id>/accel`` (and ``.../label``) into
``<prefix>.in.<partition>.<suffix>.<id>``, the partition a hash of the id. Each worker:

- creates (or finds) the stream ``HARSTREAM_<prefix>`` of ``<prefix>.in.*.*.*``, and one
  durable push consumer per partition (``p<N>``, filtered on ``<prefix>.in.<N>.*.*``,
  acknowledge-all), so one partition's messages come in stream order; a delivery lost on
  the way (a reconnect) restarts the consumer after the last message handled;
- consumes only the partitions it holds (:mod:`stream.leases`, or ``--owns``), handing
  every message to the same :meth:`stream.service.Service.deliver` as an MQTT message;
- acknowledges a message once every window that message completed is published (the
  engine's ``submitted``/``finished`` counts), never before: acknowledging one message
  acknowledges the partition's earlier ones too (AckAll);
- publishes results over MQTT to the same listener (retained states included), so apps
  subscribe exactly as before.

What a worker's death costs (kill -9, power loss): each of its devices' partial window,
the readings it had acknowledged but not yet seen in a published window (fewer than one
window: at most 79 samples, 4 s at 20 Hz, with the shipped 80-sample model). The next
owner gets everything after the last acknowledgement again, starting those devices with
empty buffers, so the windows that would have contained the lost readings are not cut
(with --hop 20: up to 80 / 20 = 4 per device, counted by the tests). Windows published
after the last acknowledgement (it trails publishing by about ``ACK_EVERY_S``) may be
followed by windows over some of the same readings, cut at other places.

A planned hand-over (a worker stopping, or giving partitions to a newcomer) loses and
repeats nothing: the old owner stops taking messages, publishes its queued windows, acknowledges
its last message, writes the partition's buffers to the ``harstream_<prefix>_handover``
bucket and releases the lease; the new owner restores them and goes on from the next
message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StreamConfig,
)
from prometheus_client import Counter, Gauge

from harstream.stream.config import ConfigError, Option
from harstream.stream.leases import Leases, plan, quota

if TYPE_CHECKING:
    from harstream.stream.service import Service

log = logging.getLogger(__name__)

NATS_OPTIONS: tuple[Option, ...] = (
    Option(
        "nats",
        "str",
        None,
        "take readings from NATS JetStream at this URL (nats://host:4222; several servers of "
        "a cluster comma-separated) instead of an MQTT subscription; --broker is then the "
        "nats-server's MQTT listener, where results go (docs/scale-out.md)",
        "URL",
    ),
    Option(
        "partitions",
        "int",
        8,
        "with --nats: partitions of the server's subject mapping (partition(P,1))",
        "P",
    ),
    Option(
        "owns",
        "str",
        None,
        "with --nats: consume these partitions (e.g. 0-3,6) whatever other workers do; "
        "unset: claim a fair share through leases",
        "LIST",
    ),
    Option(
        "lease_ttl",
        "float",
        4.0,
        "with --nats: a worker silent this long loses its partitions to the others",
        "SECONDS",
    ),
    Option(
        "worker_name",
        "str",
        None,
        "with --nats: this worker's name in leases, logs and metrics (default: host-pid)",
        "NAME",
    ),
    Option(
        "nats_replicas",
        "int",
        1,
        "with --nats: copies of the stream and buckets harstream creates (3 in a cluster "
        "of 3 survives one machine)",
        "N",
    ),
)

# Acknowledgements trail publishing by at most this; what a crash may repeat.
ACK_EVERY_S = 0.02
# Never reached in operation (acknowledgements follow within ACK_EVERY_S): a consumer
# only redelivers to itself after this, and a new owner restarts from the ack floor anyway.
ACK_WAIT_S = 300.0
# Messages delivered and not yet acknowledged per partition before the server pauses it
# (back-pressure, nothing dropped): 2 s of 10,000 devices sending a message a second,
# spread over 8 partitions, waiting for their windows.
MAX_ACK_PENDING = 20_000
# Messages the client holds per partition before it drops them as a slow consumer. They are
# all unacknowledged, so above MAX_ACK_PENDING nothing is ever dropped; a gap can then come
# only from a lost connection (recovered from: see _on_message).
PENDING_MESSAGES = 2 * MAX_ACK_PENDING
# Readings older than this are of no use to anyone (a window needs its neighbours).
STREAM_MAX_AGE_S = 3600.0
# Hand-over buffers nobody claimed within this are stale (their readings moved on).
HANDOVER_MAX_AGE_S = 600.0
# A KV value must fit a NATS message (1 MB by default): hand-overs go in chunks.
CHUNK_BYTES = 512 * 1024


@dataclass(frozen=True)
class NatsConfig:
    """The ``--nats`` options, checked (see :data:`NATS_OPTIONS`)."""

    url: str
    partitions: int = 8
    owns: frozenset[int] | None = None
    lease_ttl: float = 4.0
    worker: str = ""
    replicas: int = 1
    # the devices' calibrations in the deployment's bucket (stream.nats_store)
    calibrations: bool = False

    def __post_init__(self) -> None:
        if not all(u.startswith(("nats://", "tls://")) for u in self.url.split(",")):
            raise ConfigError(f"--nats must be nats://host:port[,nats://...], got {self.url!r}")
        if self.partitions < 1:
            raise ConfigError(f"--partitions must be >= 1, got {self.partitions}")
        if self.owns is not None and not all(0 <= p < self.partitions for p in self.owns):
            raise ConfigError(f"--owns must lie in 0-{self.partitions - 1}")
        if self.lease_ttl < 1:
            raise ConfigError(f"--lease-ttl must be >= 1 s, got {self.lease_ttl}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.worker):
            raise ConfigError(f"--worker-name must be 1-64 of A-Z a-z 0-9 _ -, got {self.worker!r}")
        if self.replicas < 1:
            raise ConfigError(f"--nats-replicas must be >= 1, got {self.replicas}")


def parse_owns(text: str) -> frozenset[int]:
    """``0-3,6`` -> {0, 1, 2, 3, 6}."""
    owned: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            owned.update(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ConfigError(f"--owns: {part!r} is not N or N-M") from None
    if not owned:
        raise ConfigError("--owns names no partition")
    return frozenset(owned)


def nats_config(values: Mapping[str, Any]) -> NatsConfig | None:
    """The NatsConfig of resolved :data:`NATS_OPTIONS` values, None without ``nats``."""
    if not values.get("nats"):
        return None
    worker = values.get("worker_name") or f"{socket.gethostname()}-{os.getpid()}"
    return NatsConfig(
        url=values["nats"],
        partitions=values["partitions"],
        owns=None if values.get("owns") is None else parse_owns(values["owns"]),
        lease_ttl=values["lease_ttl"],
        worker=re.sub(r"[^A-Za-z0-9_-]", "_", worker)[:64],
        replicas=values["nats_replicas"],
    )


def names(prefix: str) -> tuple[str, str]:
    """The subject prefix (``<prefix>`` with ``/`` as ``.``) and a name usable for
    streams and buckets, for topic prefix ``prefix``."""
    return prefix.replace("/", "."), re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


class _Partition:
    """A partition this worker consumes: its subscription, and the messages delivered but
    not yet acknowledged with the engine counts when each was handled."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sub: Any = None
        self.open = False  # taking messages
        self.closed = False  # released or lost: never opened again
        self.resuming = False
        self.generation = 0  # of subscriptions: a stale one's messages are ignored
        self.next_delivery: int | None = None  # the consumer sequence expected next
        self.last_seq = 0  # the stream sequence of the last message handled
        self.pending: collections.deque[tuple[tuple[int, ...], Any]] = collections.deque()
        self.devices: set[str] = set()


class NatsInput:
    """The :class:`stream.service.InputSource` of ``serve --nats``: its own thread runs an
    asyncio loop with the NATS connection, one fetch task per held partition, the
    acknowledgements and the leases."""

    def __init__(self, config: NatsConfig, *, prefix: str, connect_timeout: float = 30.0) -> None:
        self.config = config
        self.prefix = prefix
        self._subject, name = names(prefix)
        self.stream = f"HARSTREAM_{name}"
        self._lease_bucket = f"harstream_{name}_leases"
        self._handover_bucket = f"harstream_{name}_handover"
        self._calibration_bucket = f"harstream_{name}_calibrations"
        self._calibrations: Any = None
        self._connect_timeout = connect_timeout
        self._in = f"{self._subject}.in."
        self._service: Service | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="harstream-nats", daemon=True
        )
        self._nc: Any = None
        self._js: Any = None
        self._leases: Leases | None = None
        self._handover: Any = None
        self._held: dict[int, _Partition] = {}
        self._incoming: Any = None  # stream.service.Incoming, once started
        self._resumes = 0
        self._background: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._paused = False
        self._events: Any = None
        self._owned_gauge: Any = None

    # ---------------------------------------------------------------- InputSource

    def start(self, service: Service) -> None:
        from harstream.stream.service import Incoming  # here: the serve cli stays light

        self._incoming = Incoming
        self._service = service
        registry = service.metrics.registry
        self._events = Counter(
            "harstream_partition_events",
            "partitions claimed (claimed_free, claimed_handover, claimed_expired; explicit_* "
            "with --owns), released, lost and resumed by this worker",
            ["event"],
            registry=registry,
        )
        self._owned_gauge = Gauge(
            "harstream_partitions_owned", "partitions this worker consumes", registry=registry
        )
        self._thread.start()
        try:
            self._call(self._setup(), self._connect_timeout)
        except Exception as exc:
            self._call(self._shutdown(), 5.0, quiet=True)
            raise ConnectionError(
                f"could not set up NATS at {self.config.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def pause(self) -> None:
        self._paused = True
        if self._thread.is_alive():
            self._call(self._stop_taking(), 5.0, quiet=True)

    def close(self, timeout: float) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown(timeout), timeout + 5.0, quiet=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def calibration_store(self) -> Any:
        """The devices' calibrations in this deployment's NATS bucket
        (:class:`stream.nats_store.NatsCalibrationStore`), usable once started."""
        from harstream.stream.nats_store import NatsCalibrationStore

        return NatsCalibrationStore(lambda: self._calibrations, self._call)

    # ---------------------------------------------------------------- views for tests

    def owned(self) -> list[int]:
        """The partitions this worker consumes now."""
        return sorted(self._held)

    def resumed(self) -> int:
        """How many times a partition was resumed after a lost delivery."""
        return self._resumes

    def devices_seen(self) -> set[str]:
        """The devices of the partitions this worker holds that it has taken messages of
        (and whose buffers are live)."""
        return set().union(*(part.devices for part in list(self._held.values())))

    # ---------------------------------------------------------------- loop side

    def _call(self, coro: Any, timeout: float, quiet: bool = False) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except Exception as exc:
            if not quiet:
                raise
            log.warning("event=nats_call_failed error=%s: %s", type(exc).__name__, exc)
            return None

    async def _setup(self) -> None:
        cfg = self.config

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                # the client dropped deliveries of a partition: take them again
                number, _, _ = exc.subject[len(self._in) :].partition(".")
                part = self._held.get(int(number)) if number.isdigit() else None
                if part is not None:
                    self._resume_later(part, "dropped by this client (slow consumer)")
                return
            log.warning("event=nats_error error=%s: %s", type(exc).__name__, exc)

        async def on_reconnect() -> None:
            # deliveries sent while the connection was down are lost: take them again
            log.info("event=nats_reconnected url=%s", self._nc.connected_url)
            for part in list(self._held.values()):
                self._resume_later(part, "the connection to NATS was lost")

        self._nc = await nats.connect(
            cfg.url.split(","),
            name=f"harstream-{cfg.worker}",
            connect_timeout=min(self._connect_timeout, 10.0),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            reconnected_cb=on_reconnect,
        )
        self._js = self._nc.jetstream()
        await self._ensure_stream()
        kv = await self._bucket(
            KeyValueConfig(
                bucket=self._lease_bucket,
                ttl=cfg.lease_ttl,
                history=1,
                replicas=cfg.replicas,
            )
        )
        self._leases = Leases(kv, cfg.worker)
        self._handover = await self._bucket(
            KeyValueConfig(
                bucket=self._handover_bucket,
                ttl=HANDOVER_MAX_AGE_S,
                history=1,
                replicas=cfg.replicas,
            )
        )
        self._calibrations = await self._bucket(
            KeyValueConfig(bucket=self._calibration_bucket, history=1, replicas=cfg.replicas)
        )
        await self._leases.heartbeat()
        await self._tick()
        self._tasks = [
            asyncio.create_task(self._every(cfg.lease_ttl / 4, self._tick)),
            asyncio.create_task(self._every(ACK_EVERY_S, self._ack)),
        ]
        log.info(
            "event=nats_serving url=%s stream=%s worker=%s partitions=%d mode=%s owns=%s",
            cfg.url,
            self.stream,
            cfg.worker,
            cfg.partitions,
            "explicit" if cfg.owns is not None else "leases",
            ",".join(map(str, self.owned())) or "-",
        )

    async def _ensure_stream(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self._in}*.*.*"],
            max_age=STREAM_MAX_AGE_S,
            num_replicas=self.config.replicas,
        )
        try:
            await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self._js.stream_info(self.stream)  # another worker made it meanwhile

    async def _bucket(self, config: KeyValueConfig) -> Any:
        try:
            return await self._js.create_key_value(config)
        except nats.js.errors.BadRequestError:  # exists with other settings: use it
            return await self._js.key_value(config.bucket)

    async def _every(self, period: float, step: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a NATS hiccup: the next round retries
                log.warning("event=nats_step_failed step=%s error=%r", step.__name__, exc)

    async def _tick(self) -> None:
        """Heartbeat, renew the leases, and claim or release to keep a fair share."""
        if self._paused:
            return
        leases, cfg = self._leases, self.config
        assert leases is not None
        await leases.heartbeat()
        live = self._service.devices() if self._service is not None else set()
        for part in list(self._held.values()):
            part.devices &= live  # forget evicted devices: the set stays the buffers' size
            if not part.open and not part.resuming and not part.closed:
                self._resume_later(part, "retrying")  # a resume failed: try again
        if cfg.owns is not None:
            for p in sorted(cfg.owns):
                await leases.hold(p)
                if p not in self._held:
                    await self._open(p, "explicit")
            return
        for p in list(self._held):
            if p in self._held and not await leases.renew(p):
                await self._lose(p)
        workers, free = await leases.scan(cfg.partitions)
        claim, release = plan(self._held, free, cfg.partitions, workers)
        for p in release:
            await self._release(p, "rebalance")
        room = quota(cfg.partitions, workers) - len(self._held)
        for p in claim:
            if room <= 0 or self._paused:
                break
            if await leases.claim(p):
                room -= 1
                await self._open(p, "lease")
        self._owned_gauge.set(len(self._held))

    async def _open(self, p: int, how: str) -> None:
        """Start consuming partition ``p`` (``how``: ``lease`` or ``explicit``, for
        --owns): restore a hand-over, consume from the first unacknowledged message."""
        service = self._service
        assert service is not None
        part = self._held[p] = _Partition(p)  # counted and renewed from now on
        part.resuming = True  # not resumed before it is first subscribed
        try:
            restored, source = 0, "free"
            data, previous = await self._take_handover(p)
            if data is not None:
                restored = service.put_devices(data)
                source = "handover"
            start, existed = await self._subscribe(part)
        except BaseException:
            del self._held[p]
            raise
        finally:
            part.resuming = False
        if existed and source == "free":
            source = "expired"  # someone consumed it and vanished without a hand-over
        self._events.labels(f"{'claimed' if how == 'lease' else how}_{source}").inc()
        self._owned_gauge.set(len(self._held))
        log.info(
            "event=partition_claimed partition=%d worker=%s from=%s previous=%s "
            "start_seq=%s devices_restored=%d",
            p,
            self.config.worker,
            source,
            previous or "-",
            start or "first",
            restored,
        )

    async def _subscribe(self, part: _Partition, after: int = 0) -> tuple[int | None, bool]:
        """(Re)create the partition's consumer at its first unacknowledged message (and
        after stream sequence ``after``) and subscribe; the first sequence (None: the
        stream's first) and whether a consumer existed."""
        durable = f"p{part.number}"
        start, existed = None, False
        try:
            info = await self._js.consumer_info(self.stream, durable)
            # a consumer that has acknowledged nothing reports an ack floor of 0, not the
            # sequence before the one it was created at
            start = max(info.ack_floor.stream_seq + 1, info.config.opt_start_seq or 1, after + 1)
            await self._js.delete_consumer(self.stream, durable)
            existed = True
        except nats.js.errors.NotFoundError:
            pass
        # A push consumer: the server sends each message as it is stored (a pull request
        # for a batch was held until the batch filled or expired: 0.5 s at 1,000 devices
        # on one worker, measured with bench e2e).
        config = ConsumerConfig(
            durable_name=durable,
            deliver_subject=self._nc.new_inbox(),
            filter_subject=f"{self._in}{part.number}.*.*",
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
        )
        await self._js.add_consumer(self.stream, config)
        if part.closed:
            return start, existed
        generation = part.generation

        async def on_message(msg: Any) -> None:
            if part.generation == generation:
                self._on_message(part, msg)

        part.next_delivery = None
        part.open = True
        part.sub = await self._js.subscribe_bind(
            self.stream,
            config,
            durable,
            cb=on_message,
            manual_ack=True,
            pending_msgs_limit=PENDING_MESSAGES,
        )
        return start, existed

    def _on_message(self, part: _Partition, msg: Any) -> None:
        """One message of a held partition, in stream order (no await: a release cannot
        fall between handling it and noting it as pending)."""
        service = self._service
        assert service is not None
        if not part.open or self._paused:
            return  # not acknowledged: the partition's next owner gets it
        delivery = msg.metadata.sequence.consumer
        if part.next_delivery is not None and delivery != part.next_delivery:
            # A delivery went missing: acknowledging the ones after it would acknowledge
            # it too. Restart the consumer after the last message handled instead.
            self._resume_later(part, f"delivery {part.next_delivery} missing, got {delivery}")
            return
        part.next_delivery = delivery + 1
        part.last_seq = msg.metadata.sequence.stream
        # <prefix>.in.<p>.<suffix>.<id>; nats-server >= 2.10 writes a '.' of an MQTT topic
        # as '//' (2.9 refuses such topics)
        _p, _, rest = msg.subject[len(self._in) :].partition(".")
        suffix, _, device = rest.partition(".")
        device = device.replace("//", ".")
        if not service.deliver(self._incoming(f"{self.prefix}/{device}/{suffix}", msg.data)):
            return
        part.devices.add(device)
        part.pending.append((service.progress()[0], msg))

    async def _ack(self) -> None:
        """Acknowledge, per partition, the last message whose windows are all out."""
        for part in list(self._held.values()):
            await self._ack_part(part)

    async def _ack_part(self, part: _Partition) -> None:
        service = self._service
        assert service is not None
        finished = service.progress()[1]
        last = None
        pending = part.pending
        while pending and all(f >= s for f, s in zip(finished, pending[0][0], strict=True)):
            last = pending.popleft()[1]
        if last is not None:
            await last.ack()

    async def _halt(self, part: _Partition) -> None:
        """Take no more of the partition's messages."""
        part.open = False
        part.generation += 1
        if part.sub is not None:
            with contextlib.suppress(Exception):
                await part.sub.unsubscribe()
            part.sub = None

    async def _drain(self, part: _Partition, timeout: float) -> bool:
        """Wait until the partition's windows are published and acknowledge them all."""
        deadline = time.monotonic() + timeout
        while True:
            await self._ack_part(part)
            if not part.pending:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(ACK_EVERY_S)

    async def _release(self, p: int, reason: str, timeout: float = 10.0) -> None:
        """Hand partition ``p`` over: stop taking messages, publish and acknowledge, save its
        devices' buffers for the next owner, give the lease back."""
        part = self._held.pop(p)
        part.closed = True
        await self._halt(part)
        if not await self._drain(part, timeout):
            log.warning(
                "event=handover_incomplete partition=%d unacknowledged=%d: windows not "
                "published in time; the next owner gets these messages again",
                p,
                len(part.pending),
            )
        service = self._service
        assert service is not None
        data = service.take_devices(part.devices)
        await self._put_handover(p, data)
        if self.config.owns is None and self._leases is not None:
            await self._leases.release(p)
        self._events.labels("released").inc()
        self._owned_gauge.set(len(self._held))
        log.info(
            "event=partition_released partition=%d worker=%s reason=%s devices=%d bytes=%d",
            p,
            self.config.worker,
            reason,
            len(part.devices),
            len(data),
        )

    def _resume_later(self, part: _Partition, why: str) -> None:
        """Stop taking ``part``'s messages now and :meth:`_resume` it."""
        if part.resuming or part.closed:
            return
        part.resuming = True
        part.open = False
        log.warning(
            "event=delivery_gap partition=%d reason=%r: consuming again from the last "
            "message handled",
            part.number,
            why,
        )
        task = asyncio.get_running_loop().create_task(self._resume(part))
        self._background.add(task)  # a task nobody references may be collected
        task.add_done_callback(self._background.discard)

    async def _resume(self, part: _Partition) -> None:
        """Consume ``part`` again after the last message handled here, keeping the
        devices' buffers; a failure leaves it closed for the next lease round to retry."""
        self._resumes += 1
        try:
            await self._halt(part)
            await self._drain(part, 10.0)
            if part.closed:
                return
            start, _ = await self._subscribe(part, after=part.last_seq)
            self._events.labels("resumed").inc()
            log.info("event=partition_resumed partition=%d start_seq=%s", part.number, start)
        except Exception as exc:
            log.error("event=resume_failed partition=%d error=%r", part.number, exc)
        finally:
            part.resuming = False

    async def _lose(self, p: int) -> None:
        """The lease expired and another worker holds ``p``: stop at once; the buffers are
        dropped (the new owner restarts from the last acknowledgement)."""
        part = self._held.pop(p)
        part.closed = True
        await self._halt(part)
        service = self._service
        assert service is not None
        service.take_devices(part.devices)
        self._events.labels("lost").inc()
        holder = await self._leases.holder(p) if self._leases is not None else None
        log.warning(
            "event=partition_lost partition=%d worker=%s holder=%s: the lease expired "
            "(this worker was silent for --lease-ttl %g s); devices=%d dropped",
            p,
            self.config.worker,
            holder or "-",
            self.config.lease_ttl,
            len(part.devices),
        )

    async def _put_handover(self, p: int, data: bytes) -> None:
        chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        for i, chunk in enumerate(chunks):
            await self._handover.put(f"partition.{p}.{i}", chunk)
        header = f"{len(chunks)} {self.config.worker}".encode()
        await self._handover.put(f"partition.{p}", header)

    async def _take_handover(self, p: int) -> tuple[bytes | None, str | None]:
        """The buffers the last owner of ``p`` left, and its name; removed from the bucket."""
        try:
            header = (await self._handover.get(f"partition.{p}")).value or b""
        except nats.js.errors.KeyNotFoundError:
            return None, None
        count, _, previous = header.decode().partition(" ")
        parts = []
        for i in range(int(count)):
            parts.append((await self._handover.get(f"partition.{p}.{i}")).value or b"")
        await self._handover.delete(f"partition.{p}")
        return b"".join(parts), previous

    async def _stop_taking(self) -> None:
        if self._tasks:
            self._tasks[0].cancel()  # no more claims
        for part in self._held.values():
            await self._halt(part)

    async def _shutdown(self, timeout: float = 5.0) -> None:
        """A clean stop: hand every partition over, leave, close the connection."""
        self._paused = True
        for task in self._tasks:
            task.cancel()
        for p in list(self._held):
            await self._release(p, "stop", timeout)
        if self._leases is not None:
            with contextlib.suppress(Exception):
                await self._leases.leave()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
