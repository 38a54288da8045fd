"""``harstream replay``, ``harstream simulate`` and ``harstream demo``: arguments only.

The commands' work lives in ``replay.commands`` and ``replay.demo``, imported when a
command runs, so that ``harstream --help`` stays fast. Broker flags, ``--prefix``,
``--hop`` and ``--max-gap`` are the very options of ``harstream serve`` (same names,
environment variables and TOML keys), so one configuration serves both sides.
"""

from __future__ import annotations

import argparse
from typing import Any

from harstream.models.har.cli import COLUMNS_HELP, columns_argument
from harstream.stream.config import SERVE_OPTIONS, Option, add_options
from harstream.stream.connection import add_broker_arguments

FORMATTER = argparse.RawDescriptionHelpFormatter


def _serve_options(*names: str) -> list[Option]:
    by_name = {opt.name: opt for opt in SERVE_OPTIONS}
    return [by_name[name] for name in names]


DEMO_OPTIONS = (
    Option(
        "embedded_broker",
        "bool",
        True,
        "when nothing listens at the broker address (localhost:1883 unless --broker names "
        "another local port), start the embedded broker there for the demo's lifetime",
    ),
    *_serve_options("model"),
)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    add_broker_arguments(parser, persistent=False)
    group = parser.add_argument_group("service (as configured for harstream serve)")
    add_options(group, _serve_options("prefix", "hop", "max_gap"))
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file, the same as harstream serve's (env HARSTREAM_CONFIG)",
    )


def _add_publishing(parser: argparse.ArgumentParser, *, default_k: int) -> None:
    group = parser.add_argument_group("publishing")
    group.add_argument(
        "-k",
        "--samples-per-message",
        type=int,
        default=default_k,
        metavar="K",
        help=f"samples batched into one message (default: {default_k})",
    )
    group.add_argument(
        "--qos", type=int, choices=(0, 1, 2), default=1, help="QoS of the samples (default: 1)"
    )
    group.add_argument(
        "--binary",
        action="store_true",
        help="send evenly spaced samples in the compact binary form instead of JSON",
    )
    group.add_argument(
        "--stagger",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="spread the devices' starts over this many seconds (default: 1)",
    )
    group.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop publishing after this many seconds (default: when done / on Ctrl-C)",
    )


def _add_scoring(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    group = parser.add_argument_group("scoring the service's predictions")
    if optional:
        group.add_argument(
            "--compare",
            action="store_true",
            help="subscribe to <prefix>/<id>/activity and score each prediction against the "
            "true label of its window: live accuracy, then a report",
        )
    group.add_argument(
        "--json", metavar="OUT", help="also write the report as JSON (accuracy, macro_f1, ...)"
    )
    group.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after publishing, give up on missing predictions after this long without one "
        "(default: 5)",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")


REPLAY_EPILOG = """\
file layouts (detected per file, as the HAR loaders read them):
  WISDM 2019         subject,activity,x,y,z;           (20 Hz, no timestamps)
  WISDM 2019 + time  subject,activity,timestamp,x,y,z;
  WISDM v1.1         user,activity,timestamp,x,y,z;
  CSV                header t,x,y,z[,label][,subject][,device] (other names: --columns)
Each subject/device becomes one device id (or --device-id). Without timestamps, samples
are sent 50 ms apart (20 Hz). Dirty lines are skipped and counted.

examples:
  harstream replay data_1600_accel_watch.txt --compare
  harstream replay walk.csv --device-id phone-1 --speed max -k 20 --compare --json out.json
  harstream replay data_1600_accel_watch.txt --devices 200 -k 20 --duration 60   # load test
"""

SIMULATE_EPILOG = """\
Every simulated device id starts with "sim-" and every summary says SIMULATED: these are
synthetic signals (gravity on the sensor's axes, gait at 1.4-2.9 Hz with harmonics, quiet
postures), not recordings.

examples:
  harstream simulate --devices 100 --duration 60
  harstream simulate --devices 10 --rate 50 --jitter-ms 5 --drop 0.02 --clock-drift 1 --compare
"""

DEMO_EPILOG = """\
Uses the MQTT broker at localhost:1883, or starts the embedded one there when none runs;
starts the service in this process with the shipped models; streams the devices and shows
a live table, and the same on a web page (harstream dashboard, at the address it prints;
--no-dashboard turns it off). Ctrl-C (or --duration) ends it with a summary and leaves
nothing running, and nothing retained under <prefix>/ on a broker that keeps running.
"""


def register(groups: dict[str, Any]) -> None:
    """Add ``replay``, ``simulate`` and ``demo`` to the top-level ``harstream`` command."""
    top = groups[""]
    replay = top.add_parser(
        "replay",
        help="replay recorded sensor files through the live service",
        description="Publish recorded accelerometer files to <prefix>/<id>/accel, paced by\n"
        "their timestamps, optionally scoring the service's predictions (--compare).",
        epilog=REPLAY_EPILOG,
        formatter_class=FORMATTER,
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="recordings (files or folders)")
    source = replay.add_argument_group("recordings")
    source.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "wisdm2019", "wisdm2019-ts", "wisdm-v1.1", "csv"),
        help="file layout (default: detected per file)",
    )
    source.add_argument(
        "--columns", type=columns_argument, metavar="FIELD=COLUMN,...", help=COLUMNS_HELP
    )
    source.add_argument(
        "--device-id", metavar="ID", help="device id to publish as (default: from the file)"
    )
    source.add_argument(
        "--speed",
        default="1",
        metavar="SPEED",
        help="1: as recorded; N: N times faster; max: as fast as the broker takes it "
        "(default: 1). The service passes each device at most 25 times real time after a "
        "burst of 120 s of data (its --device-rate-margin and --device-burst): faster "
        "replays of longer recordings lose windows as rate_limited, which --compare reports",
    )
    source.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="K",
        help="fan each recording out to K devices <id>-0..<id>-(K-1) with staggered starts",
    )
    source.add_argument("--loop", action="store_true", help="start over at the end, until stopped")
    source.add_argument(
        "--calibrate-seconds",
        type=float,
        metavar="S",
        help="calibrate each device: label the first S seconds of each activity on "
        "<prefix>/<id>/label (start/end in the sent timestamps, published right after "
        "those samples); with --compare also score only windows starting 40 s or more into "
        "an activity, as 'harstream evaluate har --calibrate-seconds' does (4-40)",
    )
    source.add_argument(
        "--max-pause",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="wait at most this long for a pause in the recording; the timestamps sent keep "
        "the real pause (default: 5)",
    )
    _add_publishing(replay, default_k=1)
    _add_scoring(replay, optional=True)
    _add_connection(replay)
    replay.set_defaults(func=_run("harstream.replay.commands", "run_replay"))

    simulate = top.add_parser(
        "simulate",
        help="simulated devices for load tests and demos (labelled SIMULATED)",
        description="Publish synthetic accelerometer devices with physically shaped signals\n"
        "and random activity changes to <prefix>/<id>/accel.",
        epilog=SIMULATE_EPILOG,
        formatter_class=FORMATTER,
    )
    _add_simulator(simulate, default_devices=10)
    simulate.add_argument(
        "--compare",
        action="store_true",
        help="score the service's predictions against the simulated activities",
    )
    _add_publishing(simulate, default_k=1)
    _add_scoring(simulate, optional=False)
    _add_connection(simulate)
    simulate.set_defaults(func=_run("harstream.replay.commands", "run_simulate"))

    demo = top.add_parser(
        "demo",
        help="one command: broker, service and devices with a live table",
        description="See the whole system work: the service with the shipped models, several\n"
        "devices streaming, a live table of true and predicted activities, and one text\n"
        "and one series message through the bus.",
        epilog=DEMO_EPILOG,
        formatter_class=FORMATTER,
    )
    demo.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="recordings to stream (default: simulated devices)",
    )
    demo.add_argument("--devices", type=int, default=4, metavar="N", help="devices (default: 4)")
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="end after this long (default: Ctrl-C)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--prefix",
        default="demo",
        help="topic prefix of the demo's service and devices, so that a service or another "
        "demo under another prefix on the same broker is not fed (default: demo; "
        "HARSTREAM_PREFIX does not apply)",
    )
    add_options(demo.add_argument_group("model"), DEMO_OPTIONS[1:])
    add_broker_arguments(demo, persistent=False)
    add_options(demo.add_argument_group("embedded broker"), DEMO_OPTIONS[:1])
    page = demo.add_argument_group("dashboard")
    page.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the live web page of harstream dashboard on 127.0.0.1 and print its "
        "address (--no-dashboard: the terminal table only; default: on)",
    )
    page.add_argument(
        "--dashboard-port",
        type=int,
        default=8050,
        metavar="PORT",
        help="the page's port (default: 8050; any free port when that one is taken)",
    )
    demo.set_defaults(func=_run("harstream.replay.demo", "run_demo"))


def _add_simulator(parser: argparse.ArgumentParser, *, default_devices: int) -> None:
    group = parser.add_argument_group("simulated devices")
    group.add_argument(
        "--devices",
        type=int,
        default=default_devices,
        metavar="N",
        help=f"number of devices (default: {default_devices})",
    )
    group.add_argument("--rate", type=float, default=20.0, metavar="HZ", help="sample rate (20)")
    group.add_argument(
        "--orientation",
        choices=("wrist", "pocket", "mixed"),
        default="wrist",
        help="how the sensor is worn: a watch (as WISDM 2019), a phone in the pocket (as "
        "WISDM v1.1), or a mix (default: wrist)",
    )
    group.add_argument(
        "--dwell",
        type=float,
        nargs=2,
        default=(20.0, 60.0),
        metavar=("MIN", "MAX"),
        help="seconds an activity lasts before it changes (default: 20 60)",
    )
    group.add_argument(
        "--jitter-ms", type=float, default=0.0, metavar="MS", help="timestamp jitter (std, ms)"
    )
    group.add_argument(
        "--drop", type=float, default=0.0, metavar="P", help="probability a sample is lost"
    )
    group.add_argument(
        "--clock-drift",
        type=float,
        default=0.0,
        metavar="PCT",
        help="device clocks run this many percent fast or slow (random sign per device)",
    )
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _run(module: str, function: str) -> Any:
    """A ``func(args)`` that imports ``module`` only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return run
