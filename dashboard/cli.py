"""``harstream dashboard``: flags and the command's run loop.

The broker flags, ``--prefix`` and ``--config`` are ``harstream serve``'s own (same names,
``HARSTREAM_*`` environment variables and TOML keys), so the dashboard reads the file the
service reads. Its own settings (the page's address, bounds, ``--allow-actions``) are flags,
``HARSTREAM_DASHBOARD_*`` environment variables or keys of that file's ``[dashboard]``
table, which ``serve`` leaves alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harstream.stream.config import (
    SERVE_OPTIONS,
    ConfigError,
    Option,
    add_options,
    load_toml,
    resolve,
    unknown_keys,
)
from harstream.stream.connection import add_broker_arguments

if TYPE_CHECKING:
    from harstream.dashboard.app import DashboardSettings


class DashboardOption(Option):
    """An option of the dashboard alone: its environment variable is HARSTREAM_DASHBOARD_*."""

    @property
    def env(self) -> str:
        return "HARSTREAM_DASHBOARD_" + self.name.upper()


DASHBOARD_OPTIONS: tuple[Option, ...] = (
    DashboardOption("host", "str", "127.0.0.1", "address the page is served on", "ADDR"),
    DashboardOption("port", "int", 8050, "port the page is served on (0: any free port)", "PORT"),
    DashboardOption(
        "allow_actions",
        "bool",
        False,
        "let the page publish labels and calibration resets to <prefix>/<id>/label (anyone "
        "who can open the page can then do so)",
    ),
    DashboardOption(
        "history", "float", 300.0, "seconds of each device's timeline kept for its detail view", "S"
    ),
    DashboardOption(
        "evict_after", "float", 600.0, "forget a device after this long without a message", "S"
    ),
    DashboardOption("max_devices", "int", 10000, "devices kept (least recently seen dropped)", "N"),
    DashboardOption(
        "push_interval", "float", 0.25, "seconds between the batches pushed to pages", "S"
    ),
)

DESCRIPTION = """\
A live web page of the service: online/offline, models, windows per second, latency
percentiles and errors; every device's current activity, confidence, time in the activity,
last message and calibration (sortable, filterable, paged for thousands of devices); one
device's timeline; the latest text classifications and series forecasts.

An ordinary MQTT client of the service's broker (read-only: it subscribes to what the
service publishes under --prefix). Open pages get batched updates a few times a second as
server-sent events; the page loads nothing from any other address.
"""

EPILOG = """\
examples:
  harstream dashboard                                  # broker at 127.0.0.1:1883, page at :8050
  harstream dashboard --broker mqtt://broker:1883 --prefix har --port 8050
  harstream dashboard --config serve.toml --host 0.0.0.0 --allow-actions
"""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``dashboard`` to the top-level ``harstream`` command."""
    parser = groups[""].add_parser(
        "dashboard",
        help="a live web page of the service and its devices",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser.add_argument_group("page"), DASHBOARD_OPTIONS)
    group = parser.add_argument_group("service (as configured for harstream serve)")
    add_options(group, [o for o in SERVE_OPTIONS if o.name == "prefix"])
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file, the same as harstream serve's (env HARSTREAM_CONFIG)",
    )
    add_broker_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(
    args: argparse.Namespace | Mapping[str, Any], env: Mapping[str, str] | None = None
) -> DashboardSettings:
    """The DashboardSettings of parsed arguments.

    Flags > HARSTREAM_DASHBOARD_* env > the ``[dashboard]`` table of ``--config`` > defaults.
    """
    from harstream.dashboard.app import DashboardSettings

    env = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    table = load_toml(given.get("config") or env.get("HARSTREAM_CONFIG")).get("dashboard", {})
    if not isinstance(table, dict):
        raise ConfigError("dashboard in the config file must be a table ([dashboard])")
    unknown = unknown_keys(table, DASHBOARD_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown keys in the config file's [dashboard]: {', '.join(unknown)}")
    v = resolve(DASHBOARD_OPTIONS, given, table, env)
    if not 0 <= v["port"] <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {v['port']}")
    for name in ("history", "evict_after", "push_interval"):
        if v[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {v[name]}")
    if v["max_devices"] < 1:
        raise ConfigError(f"--max-devices must be >= 1, got {v['max_devices']}")
    return DashboardSettings(
        host=v["host"],
        port=v["port"],
        allow_actions=v["allow_actions"],
        history_s=v["history"],
        evict_after_s=v["evict_after"],
        max_devices=v["max_devices"],
        push_interval_s=v["push_interval"],
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``harstream dashboard``; returns the exit status."""
    from harstream.dashboard.app import Dashboard
    from harstream.replay.commands import EXIT_USAGE, connection, fail

    try:
        cfg, service = connection(args, "dashboard")
        settings = settings_from_args(args)
    except (ConfigError, ValueError) as exc:
        return fail("dashboard", str(exc), EXIT_USAGE)
    try:
        dashboard = Dashboard(cfg, service["prefix"], settings)
    except OSError as exc:
        return fail("dashboard", f"cannot serve on {settings.host}:{settings.port}: {exc}", 1)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    with dashboard:
        print(
            f"harstream dashboard: {dashboard.url} (broker {cfg.url}, prefix {service['prefix']}"
            + (", actions allowed" if settings.allow_actions else ", read-only")
            + ")",
            flush=True,
        )
        if not dashboard.feed.connected.wait(10.0):
            print(f"waiting for the broker at {cfg.url} ...", file=sys.stderr, flush=True)
        stop.wait()
    return 0
