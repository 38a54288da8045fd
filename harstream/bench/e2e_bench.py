"""``harstream bench e2e``: window latency and capacity of the whole service over MQTT.

A broker (a private Mosquitto on a free loopback port, or ``--broker``), the service as a
``harstream serve`` subprocess (or, with ``--no-service``, one already running), and
load-generating publisher processes (``harstream.bench.loadgen``) streaming N devices.
Reported per run: window latency percentiles (last sample published -> prediction
received), windows expected and received, messages and samples per second sustained,
and the service's CPU use.

The services compute windows incrementally (``harstream serve --incremental``, the
default); ``--no-incremental`` serves every window in full instead, and ``--compare-full``
measures the batched service both ways in one run (the second as the "full" phase).
The "naive" baseline is the same service with batching off (``--max-batch 1
--max-wait-ms 0``: one model call per window, as each window completes), measured in the
same run under the same load, on its own topic prefix, after the batched service stopped.
``--sweep`` raises N by a factor until p99 passes the bound, windows are lost or the load
generator cannot keep its schedule, for both, and reports the largest N that held.

``--engine nats --workers W`` runs the same load through a private nats-server started
from ``examples/nats/nats-server.conf`` (its MQTT listener; readings partitioned into
JetStream) and W ``harstream serve --nats`` workers sharing the partitions, and adds each
worker's windows and CPU to the report (``workers``); there is no naive baseline then.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harstream.bench.loadgen import LoadResult, LoadSpec, run_load, split_devices
from harstream.bench.timing import percentiles_ms
from harstream.models.runtime import default_inference_threads

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0
KEPT_SCHEDULE = 0.95  # a point counts only if the generator achieved this share of its rate
ENGINES = ("mosquitto", "nats")
# NATS workers claim partitions within a lease tick (--lease-ttl / 4 = 1 s) of each other
# coming online; the warm-up runs after this, so measured load meets a settled share.
NATS_SETTLE_S = 3.0


@dataclass
class E2EConfig:
    """One e2e run; see ``harstream bench e2e --help`` for the meaning of each field."""

    devices: int = 200
    rate_hz: float = 20.0
    duration_s: float = 10.0
    samples_per_message: int = 1
    publishers: int = 2
    qos: int = 1
    hop: int = 20
    drain_s: float = 3.0
    warmup_s: float = 3.0
    prefix: str = "har"
    service: bool = True
    naive: bool = True
    max_batch: int = 128
    max_wait_ms: float = 0.0
    inference_threads: int | None = None
    model: Path | None = None
    sweep: bool = False
    bound_ms: float = 50.0
    sweep_factor: float = 1.5
    max_devices: int = 20000
    incremental: bool = True
    compare_full: bool = False
    engine: str = "mosquitto"
    workers: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}"),
            (self.workers >= 1, "workers must be >= 1"),
            (
                self.engine == "nats" or self.workers == 1,
                "several workers need --engine nats",
            ),
            (
                self.engine != "nats" or self.prefix == "har",
                "--engine nats uses the example's mapping of the har prefix",
            ),
            (self.devices >= 1, "devices must be >= 1"),
            (self.rate_hz > 0, "rate must be > 0"),
            (self.duration_s > 0, "duration must be > 0"),
            (1 <= self.samples_per_message <= 80, "samples per message must be 1-80"),
            (self.publishers >= 1, "publishers must be >= 1"),
            (self.qos in (0, 1), "qos must be 0 or 1"),
            (self.sweep_factor > 1, "the sweep factor must be > 1"),
            (self.bound_ms > 0, "the latency bound must be > 0"),
            (self.warmup_s >= 0, "the warm-up must be >= 0 seconds"),
            (1 <= self.hop <= 80, "hop must be 1-80"),
            (
                self.incremental or not self.compare_full,
                "--compare-full compares with the incremental path: drop --no-incremental",
            ),
            (
                self.inference_threads is None or self.inference_threads >= 1,
                "inference threads must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class ServiceProcess:
    """``harstream serve`` as a subprocess on the bench broker; ready once it says ``online``."""

    def __init__(
        self, broker: Any, prefix: str, args: list[str], workdir: Path, name: str = ""
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.name = name or prefix.replace("/", "_")
        self.client_id = f"harstream-bench-serve-{os.getpid()}-{self.name}"
        self.log_path = workdir / f"serve-{self.name}.log"
        self.metrics_port: int | None = None
        if name:  # one of several workers: its windows are counted from its /metrics
            from harstream.stream.broker import free_port

            self.metrics_port = free_port()
            args = [*args, "--metrics-port", str(self.metrics_port)]
        self.argv = [
            sys.executable,
            "-m",
            "harstream",
            "serve",
            "--families",
            "har",
            "--prefix",
            prefix,
            "--client-id",
            self.client_id,
            "--session-expiry",
            "1",
            # a one-off client id per run: no state or calibration worth keeping, no file
            # left behind
            "--state-file",
            "",
            "--calibration-store",
            "",
            "--no-embedded-broker",
            *_broker_argv(broker),
            *args,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        from harstream.replay.publisher import close_client, open_client
        from harstream.stream.contract import status_topic

        online = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            import orjson

            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                doc = orjson.loads(msg.payload)
                if doc.get("status") == "online" and doc.get("client_id") == self.client_id:
                    online.set()

        watcher = open_client(
            replace(self.broker, client_id=f"{self.client_id}-watch"),
            subscriptions=[status_topic(self.prefix)],
            on_message=on_message,
        )
        env = dict(os.environ)
        if self.broker.password:
            # already read from wherever it came from; an inherited password file would
            # make the child see two passwords and refuse
            env.pop("HARSTREAM_PASSWORD_FILE", None)
            env["HARSTREAM_PASSWORD"] = self.broker.password
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not online.wait(0.2):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the service did not come online (exit code {self.proc.returncode}); "
                        f"its log ends:\n{self.log_tail()}"
                    )
        finally:
            close_client(watcher)
        return self

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the service so far (Linux /proc), or None."""
        return None if self.proc is None else process_cpu_seconds(self.proc.pid)

    def predictions(self) -> float | None:
        """Predictions published so far (its ``/metrics``), None without a metrics port."""
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("harstream_predictions_total{")
        )

    def stop(self) -> None:
        """SIGTERM (the service finishes queued windows and says offline), then wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_argv(broker: Any) -> list[str]:
    """``harstream serve`` flags for the same broker (the password goes by environment)."""
    argv = [
        "--broker",
        f"{'mqtts' if broker.tls else 'mqtt'}://{broker.host}:{broker.port}",
        "--mqtt-version",
        broker.mqtt_version,
    ]
    for flag, value in (
        ("--username", broker.username),
        ("--ca-file", broker.ca_file),
        ("--cert-file", broker.cert_file),
        ("--key-file", broker.key_file),
    ):
        if value:
            argv += [flag, str(value)]
    return argv


def client_settings(running: Any) -> Any:
    """The ``BrokerConfig`` for a ``stream.broker`` broker (amqtt speaks MQTT 3.1.1 only)."""
    from harstream.stream.connection import BrokerConfig

    version = "5" if running.kind == "mosquitto" else "3.1.1"
    return BrokerConfig(host=running.host, port=running.port, mqtt_version=version)


@contextlib.contextmanager
def bench_broker(
    broker: Any | None, engine: str = "mosquitto"
) -> Iterator[tuple[Any, str, str, int | None]]:
    """``(BrokerConfig, kind, NATS URL or "", process id or None)``: the given broker, or a
    private one on free loopback ports (nats-server from the example configuration for
    ``engine="nats"``); the process id of a broker subprocess, for its CPU use."""
    from harstream.stream.broker import isolated_broker

    if engine == "nats":
        from harstream.stream.connection import BrokerConfig
        from harstream.stream.nats_server import NatsServer, nats_server_binary

        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("--engine nats needs nats-server (apt-get install nats-server)")
        server = NatsServer(binary)
        server.start()
        try:
            mqtt = BrokerConfig(host=server.host, port=server.mqtt_port, mqtt_version="3.1.1")
            yield mqtt, "nats-server", server.url, server.pid
        finally:
            server.close()
        return
    if broker is not None:
        yield broker, "external", "", None
        return
    with isolated_broker() as running:
        yield client_settings(running), running.kind, "", getattr(running, "pid", None)


def measure(
    config: E2EConfig,
    broker: Any,
    prefix: str,
    devices: int,
    tag: str,
    services: Sequence[ServiceProcess],
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Stream ``devices`` devices once against the service on ``prefix``; the result dict."""
    ids = tuple(f"{tag}-{i:05d}" for i in range(devices))
    spec = LoadSpec(
        broker=replace(broker, client_id=f"harstream-bench-load-{os.getpid()}-{tag}"),
        prefix=prefix,
        devices=ids,
        rate_hz=config.rate_hz,
        samples_per_message=config.samples_per_message,
        duration_s=config.duration_s,
        hop=config.hop,
        qos=config.qos,
        drain_s=config.drain_s,
        subscribe_qos=0 if config.engine == "nats" else None,
    )
    specs = split_devices(spec, config.publishers)
    cpu = _CpuWatch(services, broker_pid)
    results = run_load(specs, on_start=cpu.start)
    cpu.stop()
    out = summarize(config, devices, results, cpu.percent())
    out["broker_cpu_percent"] = cpu.broker_percent()
    if config.engine == "nats":
        out["workers"] = cpu.per_worker()
    return out


@dataclass
class _Sample:
    """One service's CPU seconds and predictions at one moment."""

    cpu: float | None
    windows: float | None


@dataclass
class _CpuWatch:
    """The services' CPU use (and windows published, where counted) between the start of
    the stream and the end of the drain."""

    services: Sequence[ServiceProcess]
    broker_pid: int | None = None
    first: list[_Sample] = field(default_factory=list)
    last: list[_Sample] = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0

    def _sample(self) -> list[_Sample]:
        broker = _Sample(process_cpu_seconds(self.broker_pid), None)
        return [broker, *(_Sample(s.cpu_seconds(), s.predictions()) for s in self.services)]

    def start(self) -> None:
        self.first, self.t0 = self._sample(), time.perf_counter()

    def stop(self) -> None:
        self.last, self.t1 = self._sample(), time.perf_counter()

    def broker_percent(self) -> float | None:
        """The broker subprocess's CPU use, None when not measured (external, embedded)."""
        return self._percent(self.first[0], self.last[0])

    def _percent(self, a: _Sample, b: _Sample) -> float | None:
        if a.cpu is None or b.cpu is None or self.t1 <= self.t0:
            return None
        return round(100.0 * (b.cpu - a.cpu) / (self.t1 - self.t0), 1)

    def percent(self) -> float | None:
        """All the services together, None when not measured."""
        parts = [self._percent(a, b) for a, b in zip(self.first[1:], self.last[1:], strict=True)]
        if not parts or None in parts:
            return None
        return round(sum(p for p in parts if p is not None), 1)

    def per_worker(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "windows": None
                if a.windows is None or b.windows is None
                else int(b.windows - a.windows),
                "cpu_percent": self._percent(a, b),
            }
            for s, a, b in zip(self.services, self.first[1:], self.last[1:], strict=True)
        ]


def summarize(
    config: E2EConfig, devices: int, results: list[LoadResult], cpu_percent: float | None
) -> dict[str, Any]:
    """Merge the processes' results into the report shape of ``bench e2e --json``."""
    latencies = np.concatenate([np.asarray(r.latencies_s) for r in results])
    latency = percentiles_ms(latencies, (50, 90, 99))
    latency["max"] = round(float(latencies.max() * 1e3), 3) if latencies.size else math.nan
    inside = np.concatenate([np.asarray(r.service_latencies_ms) for r in results]) / 1e3
    # messages are evenly spread, so n of them span (n - 1) intervals of 1 / rate
    span = max(r.last_s for r in results) - min(r.first_s for r in results)
    elapsed = max(r.elapsed_s for r in results)
    messages = sum(r.messages for r in results)
    samples = sum(r.samples for r in results)
    expected = sum(r.windows_expected for r in results)
    received = sum(r.windows_received for r in results)
    target = devices * config.rate_hz / config.samples_per_message
    msgs_per_s = (messages - 1) / span if span > 0 else 0.0
    out = {
        "devices": devices,
        "latency_ms": latency,
        "windows_expected": expected,
        "windows_received": received,
        "windows_lost": expected - received,
        "msgs_per_s": round(msgs_per_s, 1),
        "samples_per_s": round(msgs_per_s * samples / messages if messages else 0.0, 1),
        "target_msgs_per_s": round(target, 1),
        "service_latency_ms": percentiles_ms(inside, (50, 99)),
        "service_cpu_percent": cpu_percent,
        "generator_cpu_percent": round(100 * sum(r.cpu_s for r in results) / elapsed, 1)
        if elapsed > 0
        else None,
        "generator_max_lag_ms": round(max(r.max_lag_s for r in results) * 1e3, 1),
        "duplicates": sum(r.duplicates for r in results),
        "unmatched": sum(r.unmatched for r in results),
        "error_messages": [e for r in results for e in r.errors][:5],
    }
    out["kept_schedule"] = msgs_per_s >= KEPT_SCHEDULE * target
    out["held"] = bool(
        out["windows_lost"] == 0
        and out["kept_schedule"]
        and latencies.size > 0
        and latency["p99"] <= config.bound_ms
    )
    return out


def run(
    config: E2EConfig, broker: Any | None = None, log_line: Callable[[str], None] = print
) -> dict[str, Any]:
    """The whole e2e benchmark (single N, or ``--sweep``): batched, full (with
    ``compare_full``), then naive."""
    with tempfile.TemporaryDirectory(prefix="harstream-bench-e2e-") as tmp:
        workdir = Path(tmp)
        common_args = ["--hop", str(config.hop), *_model_args(config, workdir)]
        path_args = ["--incremental" if config.incremental else "--no-incremental"]
        if config.inference_threads is not None:
            common_args += ["--inference-threads", str(config.inference_threads)]
        with bench_broker(broker, config.engine) as (bcfg, kind, nats_url, broker_pid):
            log_line(f"broker: {kind} at {bcfg.url}")
            batched_args = [
                "--max-batch",
                str(config.max_batch),
                "--max-wait-ms",
                str(config.max_wait_ms),
            ]
            if nats_url:
                batched_args += ["--nats", nats_url]
            batched = _phase(
                config,
                bcfg,
                config.prefix,
                "batched",
                batched_args + path_args + common_args,
                config.service,
                workdir,
                log_line,
                broker_pid,
            )
            full = None
            if config.compare_full:
                full = _phase(
                    config,
                    bcfg,
                    f"{config.prefix}-full",
                    "full",
                    [*batched_args, "--no-incremental", *common_args],
                    True,
                    workdir,
                    log_line,
                )
            naive = None
            if config.naive and config.engine != "nats":
                naive_args = ["--max-batch", "1", "--max-wait-ms", "0"]
                naive = _phase(
                    config,
                    bcfg,
                    f"{config.prefix}-naive",
                    "naive",
                    naive_args + path_args + common_args,
                    True,
                    workdir,
                    log_line,
                    broker_pid,
                )
    report = _report(config, batched, naive, full)
    report["broker"] = kind
    report["engine"] = config.engine
    return report


def _model_args(config: E2EConfig, workdir: Path) -> list[str]:
    """``--model`` for the services: the given one, the shipped one, or random weights."""
    if config.model is not None:
        return ["--model", str(config.model)]
    from harstream.families import default_checkpoint
    from harstream.models.checkpoint import CheckpointError

    try:
        default_checkpoint("har")
        return []
    except CheckpointError:
        from harstream.bench.model_bench import random_har_checkpoint

        path = random_har_checkpoint("har-cnn", workdir / "har-cnn")
        log.warning("no shipped HAR model: the services use random weights (same latency)")
        return ["--model", str(path)]


def _phase(
    config: E2EConfig,
    broker: Any,
    prefix: str,
    name: str,
    service_args: list[str],
    start_service: bool,
    workdir: Path,
    log_line: Callable[[str], None],
    broker_pid: int | None = None,
) -> list[dict[str, Any]]:
    """Measure one service variant: one point, or a sweep until a point does not hold."""
    services: list[ServiceProcess] = []
    points = []
    try:
        if start_service:
            log_line(f"{name}: starting harstream serve {' '.join(service_args)}")
            if config.engine == "nats":
                for i in range(config.workers):
                    args = [*service_args, "--worker-name", f"w{i + 1}"]
                    services.append(
                        ServiceProcess(broker, prefix, args, workdir, f"w{i + 1}").start()
                    )
                time.sleep(NATS_SETTLE_S)
            else:
                services.append(ServiceProcess(broker, prefix, service_args, workdir).start())
        if config.warmup_s > 0:
            # The first seconds of traffic through a fresh broker are slow (measured here:
            # 0.1-0.5 s per window for the first seconds, gone once the broker has carried
            # some load): not what a running deployment sees.
            log_line(f"{name}: warm-up, {config.devices} devices for {config.warmup_s:g} s")
            warm = replace(config, duration_s=config.warmup_s, drain_s=1.0)
            measure(warm, broker, prefix, config.devices, f"{name[0]}w", services, broker_pid)
        devices, step = config.devices, 0
        while True:
            log_line(f"{name}: {devices} devices for {config.duration_s:g} s ...")
            point = measure(
                config, broker, prefix, devices, f"{name[0]}{step}", services, broker_pid
            )
            log_line(format_point(name, point, config.bound_ms))
            points.append(point)
            if not config.sweep or not point["held"]:
                break
            devices, step = math.ceil(devices * config.sweep_factor), step + 1
            if devices > config.max_devices:
                break
    finally:
        for service in services:
            service.stop()
    return points


def _report(
    config: E2EConfig,
    batched: list[dict[str, Any]],
    naive: list[dict[str, Any]] | None,
    full: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    def best(points: list[dict[str, Any]]) -> dict[str, Any]:
        held = [p for p in points if p["held"]]
        return held[-1] if held else points[0]

    report = dict(best(batched) if config.sweep else batched[0])
    if naive:
        report["naive"] = best(naive) if config.sweep else naive[0]
    if full:
        report["full"] = best(full) if config.sweep else full[0]
    if config.sweep:
        report["sweep"] = {
            "bound_ms": config.bound_ms,
            "factor": config.sweep_factor,
            "capacity_devices": max((p["devices"] for p in batched if p["held"]), default=0),
            "points": batched,
        }
        if naive:
            report["sweep"]["naive_capacity_devices"] = max(
                (p["devices"] for p in naive if p["held"]), default=0
            )
            report["sweep"]["naive_points"] = naive
        if full:
            report["sweep"]["full_capacity_devices"] = max(
                (p["devices"] for p in full if p["held"]), default=0
            )
            report["sweep"]["full_points"] = full
    report["settings"] = {
        "rate_hz": config.rate_hz,
        "samples_per_message": config.samples_per_message,
        "duration_s": config.duration_s,
        "publishers": config.publishers,
        "qos": config.qos,
        "hop": config.hop,
        "incremental": config.incremental,
        "max_batch": config.max_batch,
        "max_wait_ms": config.max_wait_ms,
        "inference_threads": config.inference_threads or default_inference_threads(),
        "bound_ms": config.bound_ms,
        "warmup_s": config.warmup_s,
        "cpu_count": os.cpu_count(),
        "engine": config.engine,
        "workers": config.workers,
    }
    return report


def _failures(p: dict[str, Any], bound_ms: float) -> list[str]:
    """Which of the "held" conditions a point missed, in words."""
    failures = []
    if p["windows_lost"]:
        failures.append(f"{p['windows_lost']} windows lost")
    if not p["kept_schedule"]:
        failures.append("the load generator fell behind its schedule")
    if not p["windows_received"]:
        failures.append("no prediction arrived")
    elif not p["latency_ms"]["p99"] <= bound_ms:
        failures.append(f"p99 above {bound_ms:g} ms")
    return failures


def format_point(name: str, p: dict[str, Any], bound_ms: float) -> str:
    """One human-readable line per measured point."""
    lat = p["latency_ms"]
    cpu = "n/a" if p["service_cpu_percent"] is None else f"{p['service_cpu_percent']:.0f}%"
    cpu += f", generator {p['generator_cpu_percent']:.0f}%" if p["generator_cpu_percent"] else ""
    verdict = "held" if p["held"] else f"NOT held: {', '.join(_failures(p, bound_ms))}"
    if p.get("broker_cpu_percent") is not None:
        cpu += f", broker {p['broker_cpu_percent']:.0f}%"
    for worker in p.get("workers", ()):
        cpu += f"; {worker['name']}: {worker['windows']} windows, {worker['cpu_percent']}% CPU"
    return (
        f"  {name:<8} devices={p['devices']:<6} p50={lat['p50']:.2f} p90={lat['p90']:.2f} "
        f"p99={lat['p99']:.2f} max={lat['max']:.2f} ms (in the service: p50="
        f"{p['service_latency_ms']['p50']:.2f} p99={p['service_latency_ms']['p99']:.2f})"
        f"  windows {p['windows_received']}/"
        f"{p['windows_expected']}  {p['msgs_per_s']:.0f} msg/s (target "
        f"{p['target_msgs_per_s']:.0f})  {p['samples_per_s']:.0f} samples/s  service CPU {cpu}"
        f"  {verdict}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The human-readable summary of a ``bench e2e`` report."""
    bound = report["settings"]["bound_ms"]
    lines = [format_point("batched", report, bound)]
    if "full" in report:
        lines.append(format_point("full", report["full"], bound))
    if "naive" in report:
        lines.append(format_point("naive", report["naive"], bound))
    sweep = report.get("sweep")
    if sweep:
        lines.append(f"capacity (p99 <= {bound:g} ms, nothing lost): {sweep['capacity_devices']}")
        if "full_capacity_devices" in sweep:
            lines.append(f"full-path capacity: {sweep['full_capacity_devices']} devices")
        if "naive_capacity_devices" in sweep:
            lines.append(f"naive capacity: {sweep['naive_capacity_devices']} devices")
    return "\n".join(lines)
