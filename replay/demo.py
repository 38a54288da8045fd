"""``harstream demo``: the whole system in one command, and nothing left running after it.

It uses the broker at localhost:1883 (or ``--broker``), and when nothing listens there and
the address is on this machine, has the service start its embedded broker for the demo's
lifetime. The service runs in this process with the shipped models; several devices
(recordings from ``--data``, else SIMULATED devices) stream at 20 Hz through the same run
loop as ``harstream replay --compare``, and a live table shows each device's true and
predicted activity (smoothed over recent windows, beside each window's own "raw" answer,
with a count of the flips smoothing removed), and the same on the web page of
``harstream dashboard`` (unless ``--no-dashboard``). One text message and one series go
through the bus when those model families are installed. Topics use the prefix ``demo``
(or ``--prefix``) so that a service already running on the same broker is neither fed
nor disturbed (its retained status stays its own), and two demos with different
prefixes share a broker without feeding each other. On exit the demo clears the
retained messages it made on a broker that outlives it (the service's status, each
device's state and calibration), so a later subscriber to ``<prefix>/#`` finds nothing
left over.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from harstream.replay.cli import DEMO_OPTIONS
from harstream.replay.commands import EXIT_BROKER, EXIT_USAGE, fail
from harstream.replay.compare import Scoreboard, format_report
from harstream.replay.labelling import label_first_activity
from harstream.replay.pacing import Chunk, Track, stagger_offsets, track_chunks
from harstream.replay.publisher import BrokerUnavailable, close_client, open_client
from harstream.replay.runner import Runner, RunSettings
from harstream.stream.broker import is_listening
from harstream.stream.config import ConfigError, ServeConfig, resolve
from harstream.stream.connection import BrokerConfig, broker_config, default_client_id
from harstream.stream.contract import check_prefix, status_topic, topic
from harstream.stream.families.har import STATE_SUFFIX
from harstream.stream.families.har_labels import CALIBRATION_SUFFIX
from harstream.stream.preflight import BrokerError, check_broker

if TYPE_CHECKING:
    from harstream.dashboard.app import Dashboard

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
REFRESH_S = 0.5
SNAPSHOT_EVERY_S = 5.0  # when stdout is not a terminal, print the table this often
DEMO_TEXT = "WINNER!! You have been selected for a free cruise. Call 09061701461 now to claim."
SERIES_STEP = 2.0
# The first device is calibrated from its first this many seconds of one activity (the
# simulator knows it): 3 windows at the default hop, the fewest the service uses.
DEMO_LABEL_S = 6.0


class LiveTable:
    """The devices' latest predictions, redrawn in place on a terminal (snapshots otherwise)."""

    def __init__(self, board: Scoreboard, devices: Sequence[str], title: str) -> None:
        self.board = board
        self.devices = list(devices)
        self.title = title
        self.notes: list[str] = []
        self.subtitle: str | None = None  # a line under the title (the dashboard's address)
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._drawn = 0
        self._last_snapshot = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-table", daemon=True)

    def lines(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        out = [f"{self.title}   {elapsed:5.0f} s", *([self.subtitle] if self.subtitle else []), ""]
        out.append(
            f"{'device':<12} {'true activity':<14} {'predicted':<14} {'raw window':<12} "
            f"{'confidence':>10} {'latency':>10}"
        )
        latest = self.board.latest_copy()
        for device in self.devices:
            row = latest.get(device)
            if row is None:
                out.append(f"{device:<12} {'...':<14} {'(first window after 4 s)':<14}")
                continue
            truth = row.truth or "-"
            mark = "" if row.truth is None else (" ok" if row.truth == row.activity else " x")
            latency = "-" if row.latency_ms is None else f"{row.latency_ms:.1f} ms"
            name = device + (" cal" if row.calibrated else "")
            out.append(
                f"{name:<12} {truth:<14} {row.activity + mark:<14} {row.raw or '-':<12} "
                f"{row.confidence:>10.2f} {latency:>10}"
            )
        board = self.board
        acc = board.running_accuracy
        out.append("")
        out.append(
            f"windows classified: {board.received}"
            + ("" if acc is None else f"   running accuracy: {acc:.3f}")
        )
        if board.raw_flips:
            out.append(
                f"activity changes: {board.flips} shown, {board.raw_flips} in the raw windows "
                f"({board.raw_flips - board.flips} flips removed by smoothing)"
            )
        return out + self.notes

    def draw(self, force: bool = False) -> None:
        lines = self.lines()
        if self.tty:
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            body = "".join(f"{line}\x1b[K\n" for line in lines)
            sys.stdout.write(up + body + "\x1b[J")
            self._drawn = len(lines)
        elif force or time.monotonic() - self._last_snapshot >= SNAPSHOT_EVERY_S:
            self._last_snapshot = time.monotonic()
            sys.stdout.write("\n".join(lines) + "\n\n")
        sys.stdout.flush()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.draw()

    def start(self) -> None:
        self.draw(force=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.draw(force=True)


def _is_local(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _rotated(track: Track, start: int) -> Track:
    """An untimed recording starting at sample ``start`` (and wrapping), so that looped
    devices show different activities at the same moment."""
    if track.timed or not 0 < start < track.t_rel.size:
        return track
    order = np.r_[start : track.t_rel.size, 0:start]
    labels = None if track.labels is None else track.labels[order]
    return dataclasses.replace(track, xyz=track.xyz[order], labels=labels)


def device_streams(
    args: argparse.Namespace, base: float
) -> tuple[list[str], list[Iterator[Chunk]], str]:
    """The demo's devices: recordings from ``--data`` (looped), else simulated ones."""
    rng = np.random.default_rng(args.seed)
    offsets = stagger_offsets(args.devices, 1.0)
    if args.data:
        from harstream.replay.recordings import load_tracks

        tracks = load_tracks(args.data).tracks[: args.devices]
        tracks = [_rotated(t, int(rng.integers(t.t_rel.size))) for t in tracks]
        streams = [
            track_chunks(t, device=t.device, samples_per_message=1, base=base, offset=o, loop=True)
            for t, o in zip(tracks, offsets, strict=False)
        ]
        return [t.device for t in tracks], streams, f"{len(tracks)} recorded device(s)"
    from harstream.replay.simulate import SimDevice, sim_chunks, sim_device_ids

    ids = sim_device_ids(args.devices)
    sims = [SimDevice(i, seed=int(rng.integers(2**31)), dwell=(8.0, 20.0)) for i in ids]
    streams = [
        sim_chunks(sim, samples_per_message=1, base=base, offset=o)
        for sim, o in zip(sims, offsets, strict=True)
    ]
    return ids, streams, f"{len(ids)} SIMULATED device(s)"


class SideMessages:
    """One text message and one numeric series through the bus, with their answers."""

    def __init__(
        self,
        cfg: BrokerConfig,
        prefix: str,
        routes: dict[str, Any],
        missing: dict[str, str],
        table: LiveTable,
    ) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.routes = routes
        self.missing = missing
        self.table = table
        self.answers: dict[str, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-side", daemon=True)

    def start(self) -> None:
        for family, reason in self.missing.items():
            self._note(family, reason)
        if len(self.missing) < 2:
            self._thread.start()

    def stop(self) -> None:
        """Stop waiting for answers and disconnect."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _note(self, family: str, text: str) -> None:
        self.answers[family] = text
        self.table.notes[:] = [""] + [f"{f:<6} {a}" for f, a in sorted(self.answers.items())]

    def _run(self) -> None:
        families = [f for f in ("text", "series") if f in self.routes]
        outs = {topic(self.prefix, f"demo-{f}", self.routes[f].out_suffix): f for f in families}
        replied: set[str] = set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            family = outs.get(msg.topic)
            if family is not None:
                self._note(family, self._describe(family, orjson.loads(msg.payload)))
                replied.add(family)
                if replied == set(families):
                    self._done.set()

        cfg = dataclasses.replace(self.cfg, client_id=f"{self.cfg.client_id}-side")
        try:
            client = open_client(cfg, subscriptions=list(outs), on_message=on_message)
        except BrokerUnavailable as exc:
            for family in families:
                self._note(family, f"could not be sent: {exc}")
            return
        try:
            for family in families:
                route = self.routes[family]
                payload = self._payload(family, route)
                self._note(family, f"sent {payload.decode()[:70]} ... waiting")
                client.publish(topic(self.prefix, f"demo-{family}", route.suffix), payload, qos=1)
            self._done.wait(10.0)
        finally:
            close_client(client)

    @staticmethod
    def _payload(family: str, route: Any) -> bytes:
        if family == "text":
            return orjson.dumps({"text": DEMO_TEXT})
        (k,) = route.predictor.item_shape
        return orjson.dumps({"values": [20.0 + SERIES_STEP * i for i in range(k)]})

    def _describe(self, family: str, answer: dict[str, Any]) -> str:
        if family == "text":
            return (
                f"{DEMO_TEXT[:40]!r}... -> {answer.get('label')} "
                f"({answer.get('confidence', 0):.2f}, {answer.get('model')})"
            )
        (k,) = self.routes["series"].predictor.item_shape
        values = [20.0 + SERIES_STEP * i for i in range(k)]
        return (
            f"{', '.join(f'{v:g}' for v in values)} -> next {answer.get('forecast', 0):.2f} "
            f"({answer.get('model')})"
        )


def _service_config(args: argparse.Namespace, cfg: BrokerConfig) -> ServeConfig:
    """The in-process service: a clean session of its own under the demo's prefix; when
    nothing listens at a local broker address, it starts the embedded broker there."""
    options = resolve(DEMO_OPTIONS, args)
    svc_broker = dataclasses.replace(
        cfg, client_id=f"{default_client_id('demo-service')}-{os.getpid()}", session_expiry=1
    )
    if not is_listening(cfg.host, cfg.port):
        if not options["embedded_broker"] or not _is_local(cfg.host):
            raise BrokerUnavailable(
                f"no MQTT broker listens at {cfg.url}"
                + ("" if _is_local(cfg.host) else " (an embedded one can only run locally)")
            )
        svc_broker = dataclasses.replace(svc_broker, explicit=False)
    else:  # before the models load: a broker that refuses the login or wants TLS is named
        try:
            check_broker(cfg)
        except BrokerError as exc:
            raise BrokerUnavailable(f"cannot use the MQTT broker at {cfg.url}: {exc}") from None
    # a few devices: small batch buckets compile faster
    max_batch = min(8, 1 << (args.devices - 1).bit_length())
    models = {} if options["model"] is None else {"har": options["model"]}
    return ServeConfig(broker=svc_broker, models=models, prefix=args.prefix, max_batch=max_batch)


def run_demo(args: argparse.Namespace) -> int:
    """``harstream demo``."""
    from harstream.models.checkpoint import CheckpointError
    from harstream.models.har.data import DataError
    from harstream.stream.routes import RouteUnavailable
    from harstream.stream.service import Service, build_routes

    try:
        if args.devices < 1:
            raise ValueError(f"--devices must be >= 1, got {args.devices}")
        if args.duration is not None and args.duration <= 0:
            raise ValueError(f"--duration must be > 0, got {args.duration}")
        check_prefix(args.prefix)
        cfg = broker_config(args, default_client_id=f"{default_client_id('demo')}-{os.getpid()}")
        config = _service_config(args, cfg)
        devices, streams, what = device_streams(args, time.time())
    except (ConfigError, DataError, ValueError) as exc:
        return fail("demo", str(exc), EXIT_USAGE)
    except BrokerUnavailable as exc:
        return fail("demo", str(exc), EXIT_BROKER)
    print(f"harstream demo: loading the models and starting the service ({what}) ...")
    routes, missing = {}, {}
    for family in ("har", "text", "series"):  # HAR is required, the others are shown if present
        try:
            (routes[family],) = build_routes(dataclasses.replace(config, families=[family]))
        except (RouteUnavailable, CheckpointError, ConfigError, ValueError) as exc:
            if family == "har":
                return fail("demo", f"cannot load the HAR model (give --model PATH): {exc}")
            missing[family] = f"not available in this installation: {exc}"
    service = Service(config, routes=list(routes.values()))
    dashboard = None
    outlives_demo = False  # a broker that does: what the demo retained there must go
    try:
        service.start()
        client_cfg = dataclasses.replace(service.broker_config, client_id=cfg.client_id)
        if service.embedded_broker is not None:
            print(f"no broker was running: started the embedded one at {client_cfg.url}")
        else:
            outlives_demo = True
        if args.dashboard:
            dashboard = _start_dashboard(client_cfg, args.prefix, args.dashboard_port)
            print(f"dashboard: open {dashboard.url} in a browser", flush=True)
        return _stream(args, client_cfg, routes, missing, devices, streams, what, dashboard)
    except (ConnectionError, BrokerUnavailable) as exc:
        return fail("demo", str(exc), EXIT_BROKER)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        if dashboard is not None:
            dashboard.stop()
        service.stop()
        if outlives_demo:
            clear_retained(client_cfg, retained_topics(args.prefix, devices))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("demo stopped: service, connections and any embedded broker are shut down")


def _start_dashboard(cfg: BrokerConfig, prefix: str, port: int) -> Dashboard:
    """The demo's web page on 127.0.0.1: ``port``, or any free one when it is taken."""
    from harstream.dashboard.app import Dashboard, DashboardSettings

    page_cfg = dataclasses.replace(cfg, client_id=f"{cfg.client_id}-dashboard")
    try:
        dashboard = Dashboard(page_cfg, prefix, DashboardSettings(port=port))
    except OSError:
        dashboard = Dashboard(page_cfg, prefix, DashboardSettings(port=0))
    return dashboard.start()


def retained_topics(prefix: str, devices: Sequence[str]) -> list[str]:
    """Every topic the demo's service may leave a retained message on."""
    per_device = [topic(prefix, d, s) for d in devices for s in (STATE_SUFFIX, CALIBRATION_SUFFIX)]
    return [status_topic(prefix), *per_device]


def clear_retained(cfg: BrokerConfig, topics: Sequence[str]) -> None:
    """Delete the retained messages on ``topics`` (an empty retained publish each), so the
    demo leaves nothing on a broker that outlives it; only the demo's own topics, never a
    wildcard's worth, in case ``--prefix`` is shared with something else."""
    cleanup = dataclasses.replace(cfg, client_id=f"{cfg.client_id}-cleanup")
    try:
        client = open_client(cleanup)
    except BrokerUnavailable as exc:
        print(f"could not clear the demo's retained messages: {exc}", file=sys.stderr)
        return
    try:
        infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(timeout=5.0)
    except (RuntimeError, ValueError) as exc:
        print(f"could not clear the demo's retained messages: {exc}", file=sys.stderr)
    finally:
        close_client(client)


def _stream(
    args: argparse.Namespace,
    cfg: BrokerConfig,
    routes: dict[str, Any],
    missing: dict[str, str],
    devices: list[str],
    streams: list[Iterator[Chunk]],
    what: str,
    dashboard: Dashboard | None,
) -> int:
    """Stream the devices with the live table until ``--duration`` or Ctrl-C; summary."""
    simulated = not args.data
    settings = RunSettings(
        prefix=args.prefix, duration=args.duration, compare=True, wait=1.0, truth_capacity=6000
    )
    streams = [label_first_activity(streams[0], DEMO_LABEL_S), *streams[1:]]
    with Runner(cfg, settings, devices) as runner:
        title = f"harstream demo: {what} -> {cfg.url}, model {routes['har'].predictor.tag}"
        table = LiveTable(runner.scoreboard, devices, title)
        if dashboard is not None:
            table.subtitle = f"dashboard: {dashboard.url}"
        table.notes.append(
            f"{devices[0]} sends its first {DEMO_LABEL_S:g} s of one activity as a label; "
            "'cal': classified with the device's own calibration"
        )

        def calibrated(device: str, classes: dict[str, int]) -> None:
            counts = ", ".join(f"{name} {n} windows" for name, n in classes.items())
            table.notes.append(f"calibration: {device} is calibrated from its labels ({counts})")

        runner.on_calibration = calibrated
        table.start()
        side = SideMessages(cfg, args.prefix, routes, missing, table)
        side.start()
        try:
            runner.publish(streams)
            runner.wait_for_predictions()
        finally:
            side.stop()
            table.stop()
        report = runner.report(simulated=simulated)
    print()
    print("summary" + (" (SIMULATED devices)" if simulated else ""))
    print(format_report(report))
    for family in ("text", "series"):
        print(f"{family}: {side.answers.get(family, 'no answer')}")
    return 0
