"""The running service: routes + MQTT client + inference workers + metrics, start to stop.

:class:`Service` runs in-process (``with Service(config) as svc: ...`` or ``start()`` /
``stop()``), which is how ``harstream serve``, the demo, the benchmark and the tests use it.

Lifecycle:

- start: check the broker (:mod:`stream.preflight`: a broker that cannot be used fails the
  start at once, before anything slow), build the routes (loading and pre-compiling
  models), start an embedded broker if none is configured or listening, restore the
  buffers saved by the last stop (and delete that file), connect with a persistent
  session and a stable client id, subscribe QoS 1 to ``<prefix>/+/<suffix>`` of every
  route, time a QoS 1 round trip through the broker (:mod:`stream.roundtrip`; a slow one
  is a warning with its fix), publish the retained ``online`` status with it (the
  ``offline`` one is the last will);
- messages: ``on_message`` decodes and appends to the id's buffer, nothing more; ready
  inputs go to the route's inference worker. Messages are acknowledged after that, so
  on shutdown the ones not taken are redelivered to the next session;
- reconnects: paho reconnects with backoff; ``on_connect`` resubscribes and publishes
  ``online`` again; buffers stay; a broker that lost the session is logged
  (``event=session_lost``) and counted (``harstream_sessions_lost_total``);
- reload (SIGHUP, :meth:`Service.request_reload`, or ``<prefix>/service/reload`` with
  ``--reload-topic``): each family's checkpoint is loaded and compiled again on a thread of
  its own while the old model serves; the swap then holds the MQTT thread between two
  messages, lets the inference worker finish every queued input with the old model, and
  gives each device a buffer of the new route that takes over the old one's state (the
  snapshot a planned restart saves). A checkpoint that fails keeps the old model;
- stop: stop taking messages (unacknowledged ones stay with the broker), finish and
  publish every queued window, save every buffer (:mod:`stream.state`), publish
  ``offline``, disconnect (keeping the session). Saved buffers plus the readings the broker
  kept give the next session exactly the windows an uninterrupted service would have cut.
  A crash saves nothing: acknowledged readings still in a buffer or a queued window are
  lost (see :meth:`Service._restore_state`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import orjson
import paho.mqtt.client as mqtt

from harstream.models.runtime import default_inference_threads, set_cpu_threads
from harstream.stream import contract, state, takeover
from harstream.stream.broker import EmbeddedBroker, is_listening
from harstream.stream.config import ConfigError, ServeConfig
from harstream.stream.connection import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    BrokerConfig,
    connect,
    make_client,
)
from harstream.stream.devices import BufferTable
from harstream.stream.engine import DeviceSink, InferenceWorker
from harstream.stream.health import HttpEndpoints, Response, metrics_endpoint, probe
from harstream.stream.metrics import FamilyMetrics, ServiceMetrics
from harstream.stream.notices import NOTICE_EVERY_S
from harstream.stream.payloads import error_payload
from harstream.stream.preflight import CHECK_TIMEOUT_S, check_broker
from harstream.stream.ratelimit import RATE_LIMITED, RATE_LIMITED_MESSAGES, RateLimit
from harstream.stream.roundtrip import PROBE_QOS, RoundTrip, probe_topic
from harstream.stream.routes import (
    Buffer,
    Control,
    PayloadError,
    Restorable,
    Route,
    RouteUnavailable,
    load_family_predictor,
)
from harstream.stream.summary import Summary
from harstream.stream.watchdog import HandlerWatch, LogLimiter

log = logging.getLogger(__name__)

EVICT_EVERY_S = 1.0
# Mosquitto's count of messages it dropped (e.g. a client's queue was full); brokers that do
# not publish it (or deny $SYS) simply leave the gauge unset.
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
MAX_QUEUED_PUBLISHES = 100_000  # held by paho while the broker is away; beyond: dropped
# How long stop() waits for a message handler that is running when it is called. Handlers
# take well under a millisecond (4,096 samples: a few ms), so one still running after this
# is stuck, and the service stops without it rather than never.
HANDLER_GRACE_S = 5.0
# How long a reload waits for the inference worker to finish the inputs queued before the
# swap: a full queue (4,096 HAR windows) takes about 2 s on 2 cores.
SWAP_TIMEOUT_S = 30.0


class Incoming(NamedTuple):
    """A message from an input source other than the MQTT subscription, as the handler
    reads it (the attributes of a paho message it uses)."""

    topic: str
    payload: bytes
    retain: bool = False
    properties: Any = None


class InputSource(Protocol):
    """Where readings come from instead of the MQTT subscription (``serve --nats``).

    The service still publishes over MQTT. ``start`` begins calling
    :meth:`Service.deliver` (from the source's own thread) and raises ConnectionError when
    it cannot; ``pause`` stops delivering; ``close`` runs once every queued window is
    published, to acknowledge and hand over what is left.
    """

    def start(self, service: Service) -> None: ...

    def pause(self) -> None: ...

    def close(self, timeout: float) -> None: ...


@dataclass
class _Served:
    """A route with its worker, buffers and metrics, as the MQTT thread uses them."""

    route: Route
    worker: InferenceWorker
    table: BufferTable
    metrics: FamilyMetrics
    limit: RateLimit | None  # the per-device rate limit (None: --device-rate-margin 0)


def build_routes(config: ServeConfig, predictors: dict[str, Any] | None = None) -> list[Route]:
    """The routes of ``config.families``; with no families given, every available one.

    An explicitly requested family that cannot be built raises; under the default, an
    unavailable family (its shipped model is missing) is skipped with a log line.
    """
    from harstream import families as table

    predictors = predictors or {}
    explicit = config.families is not None
    families = list(config.families) if explicit else table.names()
    unknown = [f for f in families if f not in table.names()]
    if unknown:
        raise ConfigError(f"unknown families {unknown}; expected some of {table.names()}")
    if not families:
        raise ConfigError("no families to serve")
    routes = []
    for family in families:
        try:
            routes.append(table.lookup(family).build_route(config, predictors.get(family)))
        except RouteUnavailable as exc:
            if explicit:
                raise
            log.info("event=family_skipped family=%s reason=%r", family, str(exc))
    if not routes:
        raise RouteUnavailable(
            "no model family could be loaded; give --model PATH for a HAR checkpoint"
        )
    return routes


class Service:
    """One ``harstream serve`` instance, runnable in a thread of any Python process."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        routes: list[Route] | None = None,
        predictors: dict[str, Any] | None = None,
        source: InputSource | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self.prefix = contract.check_prefix(config.prefix)
        self.broker_config: BrokerConfig = config.broker or BrokerConfig()
        self.metrics = ServiceMetrics()
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self._http: list[HttpEndpoints] = []
        self.embedded_broker: EmbeddedBroker | None = None
        self._routes = routes
        self._predictors = predictors
        self._served: dict[str, _Served] = {}
        self._controls: dict[str, tuple[_Served, Control]] = {}  # by suffix
        self._client: Any = None
        self._closing = False
        self._handling = threading.Lock()
        self._started = False
        self._connected_before = False
        self._takeover = takeover.TakeoverGuard()
        self._subscribed = threading.Event()
        self._pending_sub: set[int] = set()
        self._sys_mid: int | None = None
        self._broker_dropped = 0.0
        self._stop_requested = threading.Event()
        self._next_evict = 0.0
        self._publish_failures = 0
        self._prefix_slash = self.prefix + "/"
        self._roundtrip = RoundTrip(probe_topic(self.prefix, self.broker_config.client_id))
        self._reload_topic = contract.reload_topic(self.prefix) if config.reload_topic else None
        self._extra_subs: dict[int, str] = {}  # mid -> topic of subscriptions beside the routes'
        self.broker_rtt_s: float | None = None
        self._announced = False  # the first online status is out
        self._reload_wanted = threading.Event()
        self._reload_lock = threading.Lock()
        self._last_reload: dict[str, Any] | None = None
        self._log_limiter = LogLimiter()
        self._watch = HandlerWatch(
            config.slow_handler_ms / 1000.0,
            self.metrics.slow_handlers.inc,
            limiter=self._log_limiter,
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Service:
        """Load models, connect, subscribe; returns once subscribed (or raises).

        The HTTP endpoints start first, so that a supervisor sees the process alive
        (``/healthz``) and not yet ready (``/readyz``) while the models compile.
        """
        self._serve_http()
        try:
            return self._start()
        except BaseException:
            self._close_http()
            raise

    def _start(self) -> Service:
        cfg = self.broker_config
        if cfg.explicit or is_listening(cfg.host, cfg.port):
            # before JAX starts (seconds) and the models load and compile (tens): a broker
            # that cannot be used is named at once; without --broker and with nothing
            # listening, the embedded broker starts below instead
            check_broker(cfg, min(CHECK_TIMEOUT_S, self.config.connect_timeout))
        threads = self.config.inference_threads
        if not set_cpu_threads(threads or default_inference_threads()) and threads:
            log.warning("event=inference_threads_unchanged threads=%d: JAX had started", threads)
        routes = self._routes or build_routes(self.config, self._predictors)
        if not cfg.explicit and not is_listening(cfg.host, cfg.port):
            if not self.config.embedded_broker:
                log.warning(
                    "event=no_broker url=%s: nothing listens and the embedded broker is off; "
                    "waiting up to %g s for one",
                    cfg.url,
                    self.config.connect_timeout,
                )
            else:
                self.embedded_broker = EmbeddedBroker(cfg.host, cfg.port)
                self.embedded_broker.start()
                version = self.embedded_broker.mqtt_version
                if cfg.mqtt_version != version:
                    cfg = self.broker_config = replace(cfg, mqtt_version=version)
                log.info(
                    "event=embedded_broker url=%s: no broker was listening, started the "
                    "embedded amqtt broker (MQTT 3.1.1); use Mosquitto for production",
                    cfg.url,
                )
        for route in routes:
            for suffix in (route.suffix, *route.controls):
                if suffix in self._served or suffix in self._controls:
                    raise ConfigError(f"two routes use the topic suffix {suffix!r}")
            fm = self.metrics.family(route.family)
            worker = InferenceWorker(
                route,
                self._publish,
                fm,
                prefix=self.prefix,
                max_wait_s=self.config.max_wait_ms / 1000.0,
                queue_size=self.config.queue_size,
            )
            limit = self._rate_limit(route)
            table = BufferTable(
                self._buffer_factory(route, worker, fm, limit),
                max_ids=self.config.max_devices,
                ttl_s=self.config.idle_ttl,
                on_evict=self._evict_hook(fm, limit),
            )
            served = self._served[route.suffix] = _Served(route, worker, table, fm, limit)
            for suffix, control in route.controls.items():
                self._controls[suffix] = (served, control)
            worker.start()
        self._restore_state()
        self._client = make_client(
            cfg,
            persistent=True,
            will=(self.status_topic, self._status("offline"), 1, True),
            manual_ack=True,
            max_queued=MAX_QUEUED_PUBLISHES,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._watch.start()
        self._started = True
        connect(self._client, cfg, persistent=True)
        if not self._subscribed.wait(self.config.connect_timeout):
            self.stop()
            raise ConnectionError(
                f"could not connect and subscribe to the MQTT broker at {cfg.url} within "
                f"{self.config.connect_timeout:g} s; is it running? (see --broker)"
            )
        if self._source is not None:
            try:
                self._source.start(self)
            except BaseException:
                self.stop()
                raise
        log.info(
            "event=serving broker=%s client_id=%s families=%s models=%s hop=%d max_batch=%d",
            cfg.url,
            cfg.client_id,
            ",".join(s.route.family for s in self._served.values()),
            ",".join(s.route.predictor.tag for s in self._served.values()),
            self.config.hop,
            self.config.max_batch,
        )
        self._measure_rtt()
        self._start_thread("reload", self._reloader)
        if self.config.summary_every:
            self._start_thread("summary", self._summaries)
        return self

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        """A daemon thread that ends once the service stops (a reload still compiling
        then is abandoned with the process)."""
        threading.Thread(target=target, name=f"harstream-{name}", daemon=True).start()

    def _measure_rtt(self) -> None:
        """Time QoS 1 round trips through the broker; warn once when their 90th percentile
        is over ``--rtt-warn-ms``, with the fix; set the gauge, then publish the retained
        ``online`` status with the figure (later connects publish their own)."""
        try:
            self._report_rtt(self._roundtrip.measure(self._client))
        finally:
            self._announced = True
            self._client.publish(self.status_topic, self._status("online"), qos=1, retain=True)

    def _report_rtt(self, rtt: float | None) -> None:
        if rtt is None:
            log.warning(
                "event=broker_rtt_unknown topic=%s: no probe came back in time; either the "
                "broker was busy (for example delivering the messages it queued while the "
                "service was away) or its ACL does not let the service read and write it",
                self._roundtrip.topic,
            )
            return
        self.broker_rtt_s = rtt
        self.metrics.broker_rtt.set(rtt)
        ms, bound = rtt * 1000.0, self.config.rtt_warn_ms
        if ms > bound:
            log.warning(
                "event=broker_slow rtt_ms=%.1f threshold_ms=%g broker=%s: a round trip "
                "through the broker takes up to %.1f ms, and every prediction crosses it "
                "twice. Mosquitto without 'set_tcp_nodelay true' holds small packets back "
                "(40 ms): add that line to mosquitto.conf (Debian and Ubuntu: "
                "examples/mosquitto-conf.d/harstream.conf into /etc/mosquitto/conf.d/) and "
                "restart it; otherwise the broker is far away or overloaded (--rtt-warn-ms "
                "sets this threshold)",
                ms,
                bound,
                self.broker_config.url,
                ms,
            )
        else:
            log.info("event=broker_rtt rtt_ms=%.2f", ms)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking messages, finish queued windows, publish ``offline``, disconnect.

        Takes at most ``timeout`` seconds (default ``config.stop_timeout``) whatever a
        message handler is doing. Returns False when it had to abandon work: a handler that
        did not finish (its message stays unacknowledged), or windows not published in time.
        """
        if not self._started:
            return True
        self._started = False
        timeout = self.config.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        clean = True
        abandoned = None  # the topic of a stuck handler's message
        # A message being handled now is acknowledged before we go on, unless its handler
        # is stuck: then stop without it.
        if self._source is not None:
            self._source.pause()
        if self._handling.acquire(timeout=min(HANDLER_GRACE_S, timeout)):
            self._closing = True
            self._handling.release()
        else:
            self._closing = True
            clean = False
            topic, running_s = self._watch.running() or ("?", 0.0)
            abandoned = topic
            log.error(
                "event=handler_abandoned topic=%r running_s=%.1f: a message handler did not "
                "finish; stopping without it (its message stays unacknowledged)",
                topic[:200],
                running_s,
            )
        self._reload_wanted.set()  # wakes the reload thread, which sees _closing and ends
        for served in self._served.values():
            if not served.worker.stop(max(0.1, deadline - time.monotonic())):
                clean = False
                log.error("event=windows_abandoned family=%s", served.route.family)
        if self._source is not None:
            self._source.close(max(0.1, deadline - time.monotonic()))
        self._save_state(skip=abandoned)
        client = self._client
        if client is not None and client.is_connected():
            info = client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, min(deadline - time.monotonic(), 5.0)))
            except (RuntimeError, ValueError) as exc:
                log.warning("event=offline_not_confirmed error=%s", exc)
        if client is not None:
            client.disconnect()
            if clean:  # joining paho's thread would wait forever for a stuck handler
                client.loop_stop()
        self._watch.stop()
        self._close_http()
        if self.embedded_broker is not None:
            self.embedded_broker.stop()
            self.embedded_broker = None
        self._stop_requested.set()
        log.info("event=stopped clean=%s", clean)
        return clean

    def liveness(self) -> Response:
        """``/healthz``: 503 while a message handler has run longer than --slow-handler-ms
        (the MQTT thread is stuck: every device waits), else 200."""
        running = self._watch.running()
        if running is not None and running[1] > self._watch.bound_s:
            topic, running_s = running
            return probe(
                False,
                {
                    "alive": False,
                    "reason": "message handler stuck",
                    "topic": topic[:200],
                    "running_s": round(running_s, 1),
                },
            )
        return probe(True, {"alive": True})

    def readiness(self) -> Response:
        """``/readyz``: 200 once the models are compiled and the service is connected and
        subscribed, else 503 with the first reason it is not."""
        client = self._client
        if self._closing:
            reason = "stopping"
        elif not self._started:
            reason = "starting: loading and compiling models"
        elif client is None or not client.is_connected():
            reason = "not connected"
        elif not self._subscribed.is_set():
            reason = "not subscribed"
        else:
            return probe(True, {"ready": True})
        return probe(False, {"ready": False, "reason": reason})

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the service is subscribed (again, after a reconnect) within ``timeout``."""
        return self._subscribed.wait(timeout)

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from signal handlers)."""
        self._stop_requested.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` (or :meth:`stop`) is called."""
        while not self._stop_requested.wait(0.5):
            pass

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- status

    @property
    def status_topic(self) -> str:
        return contract.status_topic(self.prefix)

    def _status(self, state: str) -> bytes:
        rtt = self.broker_rtt_s
        return orjson.dumps(
            {
                "status": state,
                "models": {s.route.family: s.route.predictor.tag for s in self._served.values()},
                "topics": {
                    s.route.family: {
                        "in": contract.subscription(self.prefix, s.route.suffix),
                        "out": contract.subscription(self.prefix, s.route.out_suffix),
                    }
                    for s in self._served.values()
                },
                "client_id": self.broker_config.client_id,
                "broker_rtt_ms": None if rtt is None else round(rtt * 1000.0, 3),
                "reload": self._last_reload,
                "time": time.time(),
            }
        )

    def _serve_http(self) -> None:
        """``/healthz`` and ``/readyz`` on --metrics-port (beside ``/metrics``) and on
        --health-port (alone), both on --metrics-host."""
        host = self.config.metrics_host
        probes = {"/healthz": self.liveness, "/readyz": self.readiness}
        if self.config.metrics_port is not None:
            metrics = metrics_endpoint(self.metrics.registry)
            server = HttpEndpoints(host, self.config.metrics_port, {**probes, "/metrics": metrics})
            self._http.append(server)
            self.metrics_port = server.port
            log.info("event=metrics url=http://%s:%d/metrics", host, server.port)
        if self.config.health_port is not None:
            server = HttpEndpoints(host, self.config.health_port, probes)
            self._http.append(server)
            self.health_port = server.port
            log.info("event=health url=http://%s:%d/healthz", host, server.port)

    def _close_http(self) -> None:
        while self._http:
            self._http.pop().close()

    # ---------------------------------------------------------------- MQTT callbacks

    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("event=connect_refused broker=%s reason=%s", self.broker_config.url, reason)
            return
        self._subscribed.clear()  # until the broker acknowledges the subscription below
        self.metrics.connects.inc()
        self._takeover.connected(time.monotonic())
        cfg = self.broker_config
        log.log(
            logging.DEBUG if self._takeover.conflict else logging.INFO,
            "event=connected broker=%s session_present=%s",
            cfg.url,
            flags.session_present,
        )
        if self._connected_before and not flags.session_present:
            # The broker forgot the session it held for us: what devices published between
            # its restart and the resubscribe below matched no subscription and is gone.
            # A fresh client id on its first connect has no session to lose.
            self.metrics.sessions_lost.inc()
            log.warning(
                "event=session_lost broker=%s client_id=%s: the broker no longer had the "
                "service's persistent session (restarted without saving it, or it expired); "
                "readings published while the service was away were lost. Keep sessions "
                "across broker crashes with 'persistence true' and 'autosave_interval 1' "
                "(examples/mosquitto.conf) and a --session-expiry longer than outages",
                cfg.url,
                cfg.client_id,
            )
        self._connected_before = True
        if self._source is None:
            suffixes = [*self._served, *self._controls]
            topics = [(contract.subscription(self.prefix, suffix), 1) for suffix in suffixes]
            _rc, mid = client.subscribe(topics)
            self._pending_sub.add(mid)
            _rc, self._sys_mid = client.subscribe(BROKER_DROPPED_TOPIC, 0)
        else:  # readings come from the source (serve --nats): no route subscription
            self._subscribed.set()
        # apart from the routes' subscription, so that a broker ACL that refuses one of
        # them costs only what it is for
        for extra, qos in ((self._roundtrip.topic, PROBE_QOS), (self._reload_topic, 1)):
            if extra is not None:
                _rc, extra_mid = client.subscribe(extra, qos)
                self._extra_subs[extra_mid] = extra
        # on every connect but the first, whose status waits for the round trip figure
        # (start): a broker that restarted without persistence lost the retained one
        if self._announced:
            client.publish(self.status_topic, self._status("online"), qos=1, retain=True)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if mid == self._sys_mid:
            if failed:
                log.info("event=no_broker_drop_count: the broker refused %s", BROKER_DROPPED_TOPIC)
            return
        extra = self._extra_subs.pop(mid, None)
        if extra is not None:
            if failed:
                log.error("event=subscribe_refused topic=%s reasons=%s", extra, failed)
            return
        if failed:
            log.error("event=subscribe_refused reasons=%s", failed)
            return
        if mid in self._pending_sub:
            self._pending_sub.discard(mid)
            self._subscribed.set()

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self._closing:
            return
        cfg = self.broker_config
        if self._takeover.disconnected(time.monotonic(), reason.value):
            self.metrics.client_id_conflicts.inc()
            log.warning(
                "event=client_id_conflict broker=%s client_id=%s: another client uses client "
                "id %s, and the broker drops one connection whenever the other connects; give "
                "each service its own --client-id. Reconnecting every %.0f s meanwhile",
                cfg.url,
                cfg.client_id,
                cfg.client_id,
                takeover.CONFLICT_DELAY_S,
            )
        if self._takeover.conflict:
            # paho waits the minimum delay after each successful connect: raise it while the
            # two clients take turns, restore it once a connection lasts
            client.reconnect_delay_set(takeover.CONFLICT_DELAY_S, RECONNECT_MAX_S)
            log.debug("event=disconnected broker=%s reason=%s", cfg.url, reason)
            return
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        log.warning("event=disconnected broker=%s reason=%s; reconnecting", cfg.url, reason)

    def _on_message(self, client: Any, _userdata: Any, msg: Any) -> None:
        # not acknowledged when closing: the broker redelivers it to our next session
        if self.deliver(msg) and msg.qos:
            client.ack(msg.mid, msg.qos)

    def deliver(self, msg: Any) -> bool:
        """Handle one message (a paho message or an :class:`Incoming`); False when the
        service is stopping and did not take it."""
        with self._handling:
            if self._closing:
                return False
            self._watch.begin(msg.topic)
            try:
                self._handle(msg)
            except Exception as exc:  # never let one message take the service down
                self._internal_error(msg.topic, exc)
            finally:
                self._watch.end()
            return True

    def progress(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per route, the model inputs submitted so far and those finished (published or
        dropped). A message handled when ``submitted`` was S has every window it completed
        out once each ``finished`` has reached S."""
        workers = [s.worker for s in self._served.values()]
        return tuple(w.submitted for w in workers), tuple(w.finished for w in workers)

    def devices(self) -> set[str]:
        """The ids that have a live buffer in any route."""
        with self._handling:
            return {device for s in self._served.values() for device, _, _ in s.table.entries()}

    def take_devices(self, devices: Collection[str]) -> bytes:
        """Remove the buffers of ``devices`` and return them as state bytes for
        :meth:`put_devices` in another service (a partition changing hands)."""
        wanted = set(devices)
        with self._handling:
            saved = self._snapshot(lambda device, _suffix: device in wanted)
            for served in self._served.values():
                for device in wanted:
                    served.table.remove(device)
        return state.dumps(saved)

    def put_devices(self, data: bytes) -> int:
        """Restore buffers that :meth:`take_devices` returned; how many devices."""
        saved = state.loads(data)
        with self._handling:
            return self._restore(saved, max(0.0, time.time() - saved.saved_at))

    def _handle(self, msg: Any) -> None:
        topic = msg.topic
        if topic == self._roundtrip.topic:
            self._roundtrip.received(msg.payload)
            return
        if topic == self._reload_topic:
            if msg.retain:  # kept by the broker: it would reload at every connect
                log.warning("event=reload_ignored topic=%s: a retained request", topic)
            else:
                log.info("event=reload_requested topic=%s", topic)
                self.request_reload()
            return
        if not topic.startswith(self._prefix_slash):
            if topic == BROKER_DROPPED_TOPIC:
                self._on_broker_dropped(msg.payload)
            return
        device, _, suffix = topic[len(self._prefix_slash) :].partition("/")
        served = self._served.get(suffix)
        control = None
        if served is None:
            if suffix not in self._controls:
                return
            served, control = self._controls[suffix]
        fm = served.metrics
        fm.messages.inc()
        if msg.retain:  # a stale reading kept by the broker, not a live one
            fm.drop("retained")
            return
        if not contract.is_valid_id(device):
            shown = f"{device[:80]!r} ({len(device)} characters)"
            message = f"invalid id {shown}: use {contract.ID_RULE}"
            self._report(served, device, "invalid_id", message, topic)
            return
        payload = msg.payload
        if len(payload) > self.config.max_payload:
            self._report(
                served,
                device,
                "oversize",
                f"payload of {len(payload)} bytes exceeds the limit of {self.config.max_payload}",
                topic,
            )
            return
        mono = time.perf_counter()
        if served.limit is not None and served.limit.closed(device, mono):
            fm.drop(RATE_LIMITED_MESSAGES)  # over its share: not worth decoding
            return
        props = msg.properties
        content_type = getattr(props, "ContentType", None) if props is not None else None
        try:
            if control is None:
                value = served.route.decode(payload, content_type)
                count = served.table.get(device, mono).push(value, time.time(), mono)
            else:
                value = control.decode(payload, content_type)
                control.apply(served.table.get(device, mono), value, time.time())
                count = 0
        except PayloadError as exc:
            self._report(served, device, exc.kind, exc.message, topic)
            return
        fm.samples.inc(count)
        if mono >= self._next_evict:
            self._next_evict = mono + EVICT_EVERY_S
            for s in self._served.values():
                s.table.evict_idle(mono)
                s.metrics.devices.set(len(s.table))

    def _on_broker_dropped(self, payload: bytes) -> None:
        try:
            dropped = float(payload)
        except ValueError:
            return
        if dropped > self._broker_dropped:
            log.warning(
                "event=broker_dropped total=%d: the broker dropped messages on a full client "
                "queue. The count is broker-wide: the queue may be another client's (a device "
                "or observer that is away or slow). The broker log names the client "
                "('Outgoing messages are being dropped for client ...', log_type notice); if "
                "it is this service (%s), raise max_queued_messages or add service capacity",
                dropped,
                self.broker_config.client_id,
            )
        self._broker_dropped = dropped
        self.metrics.broker_dropped.set(dropped)

    def _internal_error(self, topic: str, exc: Exception) -> None:
        """A handler raised something other than PayloadError: a bug, not bad input. The
        device still gets a documented error; the traceback is logged once per minute per
        exception type with a count."""
        device, _, suffix = topic[len(self._prefix_slash) :].partition("/")
        served = None
        if topic.startswith(self._prefix_slash):
            served = self._served.get(suffix) or self._controls.get(suffix, (None,))[0]
        kind = type(exc).__name__
        held = self._log_limiter.allow("internal:" + kind)
        if held is not None:
            log.error(
                "event=handler_failed topic=%r error=%s%s",
                topic[:200],
                kind,
                f" ({held} more since the last such line)" if held else "",
                exc_info=exc,
            )
        if served is None:
            self.metrics.errors.labels("unknown", "internal").inc()
            return
        message = f"the service failed to handle this message ({kind}); it was logged"
        self._report(served, device, "internal", message, topic)

    def _report(self, served: _Served, device: str, kind: str, message: str, topic: str) -> None:
        served.metrics.error(kind)
        reply = contract.reply_id(device)
        if reply != device:  # no usable id level: report on the placeholder's errors topic
            held = self._log_limiter.allow("bad_id:" + kind)
            if held is not None:
                log.warning(
                    "event=bad_input kind=%s topic=%r: %s (reported on %s%s)",
                    kind,
                    topic[:200],
                    message,
                    contract.errors_topic(self.prefix, reply),
                    f"; {held} more since the last such line" if held else "",
                )
            payload = error_payload(None, kind, message, topic[: contract.MAX_REPLY_ID])
        else:
            log.debug("event=bad_input kind=%s device=%s: %s", kind, device, message)
            payload = error_payload(device, kind, message, topic)
        self._publish(contract.errors_topic(self.prefix, reply), payload)

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        # a retained message goes once per change and is kept for late subscribers: QoS 1
        qos = 1 if retain else self.config.qos
        rc = self._client.publish(topic, payload, qos=qos, retain=retain).rc
        if rc == mqtt.MQTT_ERR_SUCCESS or (rc == mqtt.MQTT_ERR_NO_CONN and qos):
            return  # sent, or queued for the reconnect
        self._publish_failures += 1
        self.metrics.publish_failures.inc()
        if self._publish_failures == 1 or self._publish_failures % 1000 == 0:
            log.warning(
                "event=publish_failed topic=%s rc=%s failures_total=%d",
                topic,
                mqtt.error_string(rc),
                self._publish_failures,
            )

    # ---------------------------------------------------------------- model reload

    def request_reload(self) -> None:
        """Ask for the model checkpoints to be reloaded (safe from signal handlers and any
        thread); requests that come while one runs make one more run after it."""
        self._reload_wanted.set()

    def _reloader(self) -> None:
        while True:
            self._reload_wanted.wait()
            self._reload_wanted.clear()
            if self._closing:
                return
            self.reload()

    def reload(self) -> dict[str, str]:
        """Load every served family's checkpoint again (``--model`` etc., else the shipped
        one) and swap in the new models; returns ``{family: error}`` for the families that
        kept their model (empty when every one was reloaded).

        Loading and compiling run on the calling thread while the old models serve. The
        result is logged (``event=model_reloaded`` / ``event=reload_failed``), counted
        (``harstream_reloads_total{family,result}``) and published in the retained status.
        """
        from harstream import families as table

        with self._reload_lock:
            loaded, errors = {}, {}
            families = ",".join(s.route.family for s in self._served.values())
            log.info("event=reload_started families=%s", families)
            for served in list(self._served.values()):
                family, old = served.route.family, served.route.predictor.tag
                start = time.perf_counter()
                try:
                    predictor = load_family_predictor(
                        family, self.config.models.get(family), self.config.max_batch
                    )
                    route = table.lookup(family).build_route(self.config, predictor)
                    if set(route.controls) != set(served.route.controls):
                        raise ValueError(
                            f"the new model's input topics {sorted(route.controls)} differ "
                            f"from the running one's {sorted(served.route.controls)}; restart "
                            "the service to serve it"
                        )
                    load_s = time.perf_counter() - start
                    pause_s, restarted = self._swap(served, route)
                except Exception as exc:  # whatever it is, the old model keeps serving
                    errors[family] = str(exc) or type(exc).__name__
                    self.metrics.reloads.labels(family, "failed").inc()
                    log.error(
                        "event=reload_failed family=%s model=%s error=%s: %s; still serving %s",
                        family,
                        old,
                        type(exc).__name__,
                        errors[family],
                        old,
                    )
                    continue
                loaded[family] = route.predictor.tag
                self.metrics.reloads.labels(family, "ok").inc()
                log.info(
                    "event=model_reloaded family=%s old=%s new=%s load_s=%.1f pause_ms=%.1f "
                    "devices=%d devices_restarted=%d",
                    family,
                    old,
                    route.predictor.tag,
                    load_s,
                    pause_s * 1000.0,
                    len(served.table),
                    restarted,
                )
            self._last_reload = {"time": time.time(), "loaded": loaded, "errors": errors}
            client = self._client
            if client is not None and not self._closing:
                client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
            return errors

    def _swap(self, served: _Served, route: Route) -> tuple[float, int]:
        """Serve ``route`` instead of ``served.route``: returns how long the MQTT thread
        waited, and how many devices restarted their input (a snapshot the new route's
        buffers refuse: another window layout). Raises when it cannot swap."""
        # the new route must make buffers before the point of no return (the worker's swap)
        route.new_buffer("", DeviceSink("", served.worker, served.metrics))
        if not self._handling.acquire(timeout=HANDLER_GRACE_S):
            raise RuntimeError("the MQTT thread is stuck in a message handler")
        start = time.perf_counter()
        try:
            if self._closing:
                raise RuntimeError("the service is stopping")
            # every input cut by the old buffers runs with the old model first
            if not served.worker.swap(route, SWAP_TIMEOUT_S):
                raise RuntimeError(
                    f"the inference worker did not finish its queue within {SWAP_TIMEOUT_S:g} s"
                )
            restarted = 0

            def carry(old: Buffer, new: Buffer) -> None:
                nonlocal restarted
                if not isinstance(old, Restorable) or not isinstance(new, Restorable):
                    return
                try:
                    new.restore(old.snapshot())
                except Exception:  # whatever the new buffer refuses, the device starts afresh
                    restarted += 1

            served.table.rebuild(
                self._buffer_factory(route, served.worker, served.metrics, served.limit), carry
            )
            served.route = route
            for suffix, control in route.controls.items():
                self._controls[suffix] = (served, control)
        finally:
            self._handling.release()
        return time.perf_counter() - start, restarted

    def _summaries(self) -> None:
        summary = Summary(self.metrics)
        while not self._stop_requested.wait(self.config.summary_every):
            if self._closing:
                return
            # the gauge follows messages (at most once a second): bring it up to date
            for served in self._served.values():
                served.metrics.devices.set(len(served.table))
            log.info("%s", summary.line())

    # ---------------------------------------------------------------- state across restarts

    def _save_state(self, skip: str | None = None) -> None:
        """Save every restorable buffer; called once no message is handled any more, except
        the stuck handler of the message on topic ``skip``, whose device is left out (its
        buffer may be half updated)."""
        path = self.config.state_file
        if path is None:
            return
        stuck = skip[len(self._prefix_slash) :].partition("/") if skip else ("", "", "")
        saved = self._snapshot(lambda device, suffix: (device, suffix) != (stuck[0], stuck[2]))
        families = saved.families
        try:
            size = state.save(path, saved)
        except OSError as exc:
            log.error("event=state_not_saved path=%s error=%s", path, exc)
            return
        log.info(
            "event=state_saved path=%s bytes=%d devices=%s",
            path,
            size,
            ",".join(f"{f}:{len(fam.devices)}" for f, fam in families.items()),
        )

    def _restore_state(self) -> None:
        """Restore the buffers the last stop saved, before subscribing (so that the readings
        the broker kept meanwhile continue them), as recently seen as they were then.

        The file is deleted here, restored or not: after a crash (kill -9, power loss)
        nothing was saved, so the next start begins with empty buffers, and the readings
        the crashed service had acknowledged (the partial windows, and the windows waiting
        for inference) are lost; unacknowledged ones are redelivered.
        """
        path = self.config.state_file
        if path is None:
            return
        saved = state.load(
            path,
            max_age_s=self.config.state_max_age,
            client_id=self.broker_config.client_id,
            prefix=self.prefix,
        )
        if saved is None:
            return
        # idle times go on counting while the service was down, for idle eviction
        self._restore(saved, max(0.0, time.time() - saved.saved_at))

    def _snapshot(self, select: Callable[[str, str], bool]) -> state.SavedState:
        """The restorable buffers of the (device, topic suffix) pairs ``select`` keeps."""
        now = time.perf_counter()
        families = {}
        for served in self._served.values():
            devices = [
                state.DeviceState(device, now - seen, buffer.snapshot())
                for device, buffer, seen in served.table.entries()
                if isinstance(buffer, Restorable) and select(device, served.route.suffix)
            ]
            families[served.route.family] = state.FamilyState(served.route.predictor.tag, devices)
        return state.SavedState(self.broker_config.client_id, self.prefix, time.time(), families)

    def _restore(self, saved: state.SavedState, down: float) -> int:
        """Restore ``saved`` buffers as seen ``down`` seconds longer ago; how many."""
        by_family = {s.route.family: s for s in self._served.values()}
        now = time.perf_counter()
        total = 0
        for family, fam in saved.families.items():
            served = by_family.get(family)
            if served is None:
                log.info("event=state_discarded family=%s reason='family not served'", family)
                continue
            tag = served.route.predictor.tag
            if fam.model != tag:
                log.info(
                    "event=state_model_changed family=%s saved=%s now=%s", family, fam.model, tag
                )
            restored, failed, reason = 0, 0, ""
            for device, idle_s, snapshot in fam.devices:
                buffer = served.table.get(device, now - idle_s - down)
                try:
                    if not isinstance(buffer, Restorable):
                        raise TypeError(f"{type(buffer).__name__} keeps no state")
                    buffer.restore(snapshot)
                except (ValueError, TypeError, KeyError) as exc:
                    served.table.remove(device)
                    failed += 1
                    reason = reason or f"{type(exc).__name__}: {exc}"
                    continue
                restored += 1
            served.metrics.devices.set(len(served.table))
            if failed:
                log.warning(
                    "event=state_discarded family=%s devices=%d reason=%r",
                    family,
                    failed,
                    reason,
                )
            log.info(
                "event=state_restored family=%s devices=%d saved_s_ago=%.1f",
                family,
                restored,
                down,
            )
            total += restored
        return total

    # ---------------------------------------------------------------- helpers

    def _buffer_factory(
        self, route: Route, worker: InferenceWorker, fm: FamilyMetrics, limit: RateLimit | None
    ) -> Any:
        def notify(device: str, reason: str, count: int, detail: str) -> None:
            message = (
                f"{count} dropped as {reason} since the last such notice (one per "
                f"{NOTICE_EVERY_S:g} s at most); the latest: {detail}"
            )
            in_topic = contract.topic(self.prefix, device, route.suffix)
            self._report(self._served[route.suffix], device, reason, message, in_topic)

        def factory(device: str) -> Any:
            bucket = None if limit is None else limit.bucket(device)
            return route.new_buffer(device, DeviceSink(device, worker, fm, bucket, notify))

        return factory

    def _rate_limit(self, route: Route) -> RateLimit | None:
        """The route's per-device limit, None when ``--device-rate-margin`` is 0."""
        if not self.config.device_rate_margin:
            return None

        def notify(device: str, message: str) -> None:
            in_topic = contract.topic(self.prefix, device, route.suffix)
            self._report(self._served[route.suffix], device, RATE_LIMITED, message, in_topic)

        return RateLimit(
            route.family,
            route.real_rate,
            self.config.device_rate_margin,
            self.config.device_burst,
            notify,
        )

    def _evict_hook(self, fm: FamilyMetrics, limit: RateLimit | None) -> Any:
        def on_evict(device: str, reason: str) -> None:
            fm.evicted(reason)
            if limit is not None:
                limit.forget(device)
            log.debug("event=evicted family=%s device=%s reason=%s", fm.family, device, reason)

        return on_evict
