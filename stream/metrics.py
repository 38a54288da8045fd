"""Prometheus metrics of one service instance, on its own registry.

Each :class:`ServiceMetrics` owns a ``CollectorRegistry``, so several services in one
process (tests, the demo, the benchmark) keep separate counts. Hot paths use
:class:`FamilyMetrics`, whose label children are resolved once per route rather than per
message.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)


class ServiceMetrics:
    """Counters, gauges and histograms listed in docs/configuration.md (Metrics)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter(
            "harstream_messages", "MQTT messages received", ["family"], registry=r
        )
        self.samples = Counter(
            "harstream_samples", "samples/items accepted into buffers", ["family"], registry=r
        )
        self.windows = Counter(
            "harstream_windows_classified", "model inputs classified", ["family"], registry=r
        )
        self.windows_stepped = Counter(
            "harstream_windows_incremental",
            "model inputs computed incrementally from their id's previous input (the rest "
            "of harstream_windows_classified were computed in full)",
            ["family"],
            registry=r,
        )
        self.state_bytes = Gauge(
            "harstream_incremental_state_bytes",
            "bytes an id's incremental state takes (0: the family computes every input in "
            "full); at most this times harstream_devices_active in all",
            ["family"],
            registry=r,
        )
        self.predictions = Counter(
            "harstream_predictions", "predictions published", ["family"], registry=r
        )
        self.errors = Counter(
            "harstream_errors", "bad input reported, by kind", ["family", "kind"], registry=r
        )
        self.drops = Counter(
            "harstream_drops",
            "input dropped on purpose, by reason (samples; model inputs for queue_full and "
            "rate_limited)",
            ["family", "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "harstream_evictions", "device buffers evicted", ["family", "reason"], registry=r
        )
        self.devices = Gauge(
            "harstream_devices_active", "ids with a live buffer", ["family"], registry=r
        )
        self.connects = Counter("harstream_broker_connects", "broker (re)connects", registry=r)
        self.slow_handlers = Counter(
            "harstream_slow_handlers",
            "messages whose handling on the MQTT thread took longer than --slow-handler-ms",
            registry=r,
        )
        self.sessions_lost = Counter(
            "harstream_sessions_lost",
            "reconnects that found the persistent session gone at the broker (restarted "
            "without saving it, or expired): readings published meanwhile were lost",
            registry=r,
        )
        self.client_id_conflicts = Counter(
            "harstream_client_id_conflicts",
            "times another client was seen taking over the service's client id (each "
            "starts a spell of slow reconnects until a connection lasts again)",
            registry=r,
        )
        self.broker_dropped = Gauge(
            "harstream_broker_dropped_messages",
            "messages the broker says it dropped on full client queues ($SYS, Mosquitto); "
            "broker-wide: any client's queue, not only the service's",
            registry=r,
        )
        self.broker_rtt = Gauge(
            "harstream_broker_rtt_seconds",
            "median QoS 1 round trip through the broker, measured at start (--rtt-warn-ms)",
            registry=r,
        )
        self.reloads = Counter(
            "harstream_reloads",
            "model reloads (SIGHUP, --reload-topic) by family and result: ok (the new "
            "model serves) or failed (the old one still does)",
            ["family", "result"],
            registry=r,
        )
        self.publish_failures = Counter(
            "harstream_publish_failures",
            "results not published (disconnected with QoS 0, or the outgoing queue full)",
            registry=r,
        )
        self.batch_size = Histogram(
            "harstream_inference_batch_size",
            "model inputs per jitted call",
            ["family"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "harstream_inference_seconds",
            "time of one batched model call",
            ["family"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "harstream_latency_seconds",
            "receive of a window's last sample to publish of its prediction",
            ["family"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )

    def family(self, name: str) -> FamilyMetrics:
        """Pre-bound children for one route."""
        return FamilyMetrics(self, name)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (e.g. ``harstream_predictions_total``), 0 when unset."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


class FamilyMetrics:
    """The label children of one family, bound once."""

    def __init__(self, m: ServiceMetrics, family: str) -> None:
        self._m = m
        self.family = family
        self.messages = m.messages.labels(family)
        self.samples = m.samples.labels(family)
        self.windows = m.windows.labels(family)
        self.stepped = m.windows_stepped.labels(family)
        self.state_bytes = m.state_bytes.labels(family)
        self.predictions = m.predictions.labels(family)
        self.devices = m.devices.labels(family)
        self.batch_size = m.batch_size.labels(family)
        self.inference_seconds = m.inference_seconds.labels(family)
        self.latency_seconds = m.latency_seconds.labels(family)

    def error(self, kind: str) -> None:
        self._m.errors.labels(self.family, kind).inc()

    def drop(self, reason: str, n: int = 1) -> None:
        self._m.drops.labels(self.family, reason).inc(n)

    def evicted(self, reason: str) -> None:
        self._m.evictions.labels(self.family, reason).inc()
