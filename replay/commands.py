"""What ``harstream replay`` and ``harstream simulate`` do once their arguments are parsed."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from harstream.replay.compare import format_report, write_json
from harstream.replay.pacing import Chunk, parse_speed, stagger_offsets, track_chunks
from harstream.replay.publisher import BrokerUnavailable, check_samples_per_message
from harstream.replay.runner import Runner, RunSettings
from harstream.stream.config import SERVE_OPTIONS, ConfigError, load_toml, resolve
from harstream.stream.connection import BrokerConfig, broker_config, default_client_id
from harstream.stream.contract import check_prefix

EXIT_USAGE = 2
EXIT_BROKER = 1
EXIT_INTERRUPTED = 130
TRUTH_SECONDS = 300  # how much of an endless stream's past a late prediction may refer to


def fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print a one-line error the way argparse does, and return the exit code."""
    print(f"harstream {command}: error: {message}", file=sys.stderr)
    return code


def connection(args: argparse.Namespace, tool: str) -> tuple[BrokerConfig, dict[str, Any]]:
    """Broker config and the service options (prefix, hop, max_gap) from flags/env/TOML.

    The client id gets the process id: two replays on one host must not take over each
    other's connection (they keep no session, so nothing is lost by a fresh id).
    """
    toml = load_toml(getattr(args, "config", None) or os.environ.get("HARSTREAM_CONFIG"))
    client_id = f"{default_client_id(tool)}-{os.getpid()}"
    cfg = broker_config(args, default_client_id=client_id, toml=toml)
    names = ("prefix", "hop", "max_gap")
    service = resolve([o for o in SERVE_OPTIONS if o.name in names], args, toml)
    check_prefix(service["prefix"])
    return cfg, service


class Progress:
    """A tqdm bar (samples, rate, ETA) whose postfix shows the running accuracy."""

    def __init__(self, runner: Runner, total: int | None, desc: str, quiet: bool) -> None:
        from tqdm import tqdm

        self.runner = runner
        self.bar = tqdm(total=total, desc=desc, unit=" samples", disable=quiet, leave=True)
        self._shown = 0.0

    def update(self, n: int = 0) -> None:
        self.bar.update(n)
        now = time.monotonic()
        if now - self._shown >= 0.5:
            self._shown = now
            if not self.runner.settings.compare:
                return
            board = self.runner.scoreboard
            acc = board.running_accuracy
            windows = f"{board.received}/{self.runner.windows_expected} windows"
            self.bar.set_postfix_str(windows + ("" if acc is None else f", accuracy {acc:.3f}"))

    def close(self) -> None:
        self.update()
        self.bar.close()


def finish(runner: Runner, args: argparse.Namespace, **extra: Any) -> int:
    """Print the report (or what was sent), write the JSON; returns the exit code."""
    report = runner.report(**extra)
    if runner.settings.compare:
        print(format_report(report))
    else:
        print(
            f"sent {report['samples_sent']:,} samples in {report['messages_sent']:,} messages "
            f"to {report['devices']} device(s) in {report['publish_seconds']:.1f} s"
            + (" (SIMULATED)" if report.get("simulated") else "")
        )
    if report["messages_lost"]:
        print(f"warning: {report['messages_lost']} QoS 0 messages lost while disconnected")
    if args.json:
        print(f"report written to {write_json(report, args.json)}")
    return EXIT_INTERRUPTED if runner.interrupted else 0


def run_streams(
    args: argparse.Namespace,
    command: str,
    settings: RunSettings,
    cfg: BrokerConfig,
    devices: list[str],
    streams: list[Iterator[Chunk]],
    total: int | None,
    desc: str,
    **extra: Any,
) -> int:
    """Connect, publish with a progress bar, wait for predictions, report."""
    try:
        with Runner(cfg, settings, devices) as runner:
            progress = Progress(runner, total, desc, args.quiet)
            try:
                runner.publish(streams, progress.update)
                runner.wait_for_predictions(progress.update)
            finally:
                progress.close()
            return finish(runner, args, **extra)
    except BrokerUnavailable as exc:
        return fail(command, str(exc), EXIT_BROKER)


def run_replay(args: argparse.Namespace) -> int:
    """``harstream replay``."""
    from harstream.models.har.data import DataError
    from harstream.models.har.wearer import check_calibrate_seconds
    from harstream.replay.labelling import calibration_labels
    from harstream.replay.recordings import load_tracks

    try:
        cfg, service = connection(args, "replay")
        speed = parse_speed(args.speed)
        k = check_samples_per_message(args.samples_per_message)
        if args.devices < 1:
            raise ValueError(f"--devices must be >= 1, got {args.devices}")
        if args.max_pause <= 0:
            raise ValueError(f"--max-pause must be > 0, got {args.max_pause}")
        offsets = stagger_offsets(args.devices, args.stagger)
        if args.calibrate_seconds is not None:
            check_calibrate_seconds(args.calibrate_seconds)
        loaded = load_tracks(
            args.files, device_id=args.device_id, layout=args.layout, columns=args.columns
        )
    except (ConfigError, DataError, ValueError) as exc:
        return fail("replay", str(exc))
    print(loaded.summary(), file=sys.stderr)
    if args.compare and not loaded.labelled:
        print(
            "the files have no labels: --compare counts windows and latency only",
            file=sys.stderr,
        )
    if args.calibrate_seconds is not None and not loaded.labelled:
        return fail("replay", "--calibrate-seconds needs labelled recordings")
    base = time.time()
    devices, streams = [], []
    for track in loaded.tracks:
        labels = (
            []
            if args.calibrate_seconds is None
            else calibration_labels(track, args.calibrate_seconds)
        )
        for i, offset in enumerate(offsets):
            device = track.device if args.devices == 1 else f"{track.device}-{i}"[:64]
            devices.append(device)
            streams.append(
                track_chunks(
                    track,
                    device=device,
                    samples_per_message=k,
                    base=base,
                    offset=offset,
                    loop=args.loop,
                    max_pause=args.max_pause,
                    calibration=labels,
                )
            )
    settings = RunSettings(
        prefix=service["prefix"],
        qos=args.qos,
        binary=args.binary,
        speed=speed,
        duration=args.duration,
        compare=args.compare,
        hop=service["hop"],
        max_gap=service["max_gap"],
        wait=args.wait,
        truth_capacity=int(TRUTH_SECONDS * 20) if args.loop else None,
        calibrate_seconds=args.calibrate_seconds,
    )
    total = None if args.loop else sum(t.t_rel.size for t in loaded.tracks) * args.devices
    speed_text = "max" if math.isinf(speed) else f"{speed:g}x"
    print(
        f"replaying {len(loaded.tracks)} recording(s) as {len(devices)} device(s) to "
        f"{cfg.url} {service['prefix']}/<id>/accel at speed {speed_text}",
        file=sys.stderr,
    )
    return run_streams(
        args, "replay", settings, cfg, devices, streams, total, "replay", files=args.files
    )


def run_simulate(args: argparse.Namespace) -> int:
    """``harstream simulate``."""
    import numpy as np

    from harstream.replay.simulate import Imperfections, SimDevice, sim_chunks, sim_device_ids

    try:
        cfg, service = connection(args, "simulate")
        k = check_samples_per_message(args.samples_per_message)
        if args.devices < 1:
            raise ValueError(f"--devices must be >= 1, got {args.devices}")
        imperfections = Imperfections(args.jitter_ms, args.drop, args.clock_drift)
        rng = np.random.default_rng(args.seed)
        ids = sim_device_ids(args.devices)
        sims = [
            SimDevice(
                device_id,
                seed=int(rng.integers(2**31)),
                rate_hz=args.rate,
                orientation=args.orientation
                if args.orientation != "mixed"
                else ("wrist", "pocket")[i % 2],
                dwell=tuple(args.dwell),
                imperfections=imperfections,
            )
            for i, device_id in enumerate(ids)
        ]
        offsets = stagger_offsets(args.devices, args.stagger)
    except (ConfigError, ValueError) as exc:
        return fail("simulate", str(exc))
    base = time.time()
    streams = [
        sim_chunks(sim, samples_per_message=k, base=base, offset=offset)
        for sim, offset in zip(sims, offsets, strict=True)
    ]
    settings = RunSettings(
        prefix=service["prefix"],
        qos=args.qos,
        binary=args.binary,
        duration=args.duration,
        compare=args.compare,
        hop=service["hop"],
        max_gap=service["max_gap"],
        wait=args.wait,
        truth_capacity=int(TRUTH_SECONDS * args.rate),
    )
    print(
        f"SIMULATED: {args.devices} synthetic device(s) {ids[0]}..{ids[-1]} at {args.rate:g} Hz "
        f"to {cfg.url} {service['prefix']}/<id>/accel" + ("" if args.duration else " until Ctrl-C"),
        file=sys.stderr,
    )
    total = int(args.duration * args.rate * args.devices) if args.duration else None
    return run_streams(
        args, "simulate", settings, cfg, ids, streams, total, "SIMULATED", simulated=True
    )
