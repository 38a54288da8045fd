"""Layered configuration: command-line flags > ``HARSTREAM_*`` environment > TOML file > default.

Each option is declared once as an :class:`Option`; the same table builds the argparse
flags (whose defaults stay ``None`` so that "not given" is visible) and resolves the final
values, so a flag, its environment variable and its TOML key can never disagree on a name:
``--max-batch`` is ``HARSTREAM_MAX_BATCH`` and ``max_batch = 64`` in the TOML file.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harstream.models.har.smoothing import CALIBRATED, SmootherParams
from harstream.stream.contract import check_prefix
from harstream.stream.ratelimit import DEFAULT_BURST_S, DEFAULT_MARGIN

ENV_PREFIX = "HARSTREAM_"


class ConfigError(ValueError):
    """An option has an invalid value; the message names where the value came from."""


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case), as environment variables spell them."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false)")


def parse_list(text: str) -> list[str]:
    """A comma-separated list, e.g. ``har,text``."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Option:
    """One setting: its flag, type, default and help. ``kind`` is int/float/str/bool/list/path."""

    name: str
    kind: str
    default: Any
    help: str
    metavar: str | None = None
    choices: Sequence[str] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def convert(self, value: Any) -> Any:
        """Turn a text (flag, env) or TOML value into this option's type."""
        if value is None:
            return None
        converters: dict[str, Callable[[Any], Any]] = {
            "int": int,
            "float": float,
            "str": str,
            "path": Path,
            "bool": lambda v: v if isinstance(v, bool) else parse_bool(str(v)),
            "list": lambda v: list(map(str, v)) if isinstance(v, list) else parse_list(str(v)),
        }
        if isinstance(value, bool) and self.kind in ("int", "float"):
            raise ValueError(f"{value!r} is not a number")
        out = converters[self.kind](value)
        if self.choices is not None:
            for item in out if isinstance(out, list) else [out]:
                if item not in self.choices:
                    raise ValueError(f"{item!r} is not one of {', '.join(self.choices)}")
        return out


def default_state_file(client_id: str, env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/harstream/<client id>.state`` (``~/.local/state`` without it); the
    client id keeps services on one machine apart, as the state belongs to its MQTT session."""
    env = os.environ if env is None else env
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", client_id).lstrip(".") or "harstream"
    return base / "harstream" / f"{safe}.state"


def default_calibration_store(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/harstream/calibrations.sqlite``, beside the state files: one store
    for every service of the user, since a calibration belongs to a device and a model,
    not to an MQTT session."""
    return default_state_file("calibrations", env).with_suffix(".sqlite")


def add_options(parser: argparse._ActionsContainer, options: Sequence[Option]) -> None:
    """Add one flag per option; the help shows the default and the environment variable."""
    for opt in options:
        if opt.default is None:
            help_text = f"{opt.help} (env {opt.env})"
        else:
            shown = ",".join(opt.default) if isinstance(opt.default, list) else opt.default
            help_text = f"{opt.help} (default: {shown}; env {opt.env})"
        if opt.kind == "bool":
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                metavar=opt.metavar or opt.name.upper(),
                help=help_text,
            )


def load_toml(path: str | Path | None) -> dict[str, Any]:
    """The top-level keys of a TOML file (named like the options), or ``{}`` without a file."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return data


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace | Mapping[str, Any] | None,
    toml: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Final values for ``options``: flags, then environment, then TOML, then defaults."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    env = os.environ if env is None else env
    toml = toml or {}
    values: dict[str, Any] = {}
    for opt in options:
        for source, raw in (
            (opt.flag, given.get(opt.name)),
            (opt.env, env.get(opt.env)),
            (f"{opt.name} in the config file", toml.get(opt.name)),
        ):
            if raw is None:
                continue
            try:
                values[opt.name] = opt.convert(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{source}: {exc}") from None
            break
        else:
            values[opt.name] = opt.default
    return values


# Tables of the shared file that belong to other commands (``harstream dashboard``'s own
# options live under ``[dashboard]``), so one file configures the service and its tools.
TOOL_TABLES = ("dashboard",)


def unknown_keys(toml: Mapping[str, Any], options: Sequence[Option]) -> list[str]:
    """TOML keys that no option uses (likely typos); the tools' tables are not unknown."""
    names = {opt.name for opt in options} | set(TOOL_TABLES)
    return sorted(k for k in toml if k not in names)


def _family_options() -> tuple[Option, ...]:
    """``--families`` and one checkpoint option per family, from the table of families."""
    from harstream import families

    return (
        Option(
            "families",
            "list",
            None,
            "model families to serve, comma-separated; unset serves every available one "
            f"({','.join(families.names())}); a family named here that is unavailable is an "
            "error",
            "LIST",
        ),
        *(
            Option(
                f.model_option,
                "path",
                None,
                f"{f.name} checkpoint directory, or the name of a model shipped in the "
                f"package (default: {f.shipped})",
                "PATH|NAME",
            )
            for f in families.FAMILIES
        ),
    )


SERVE_OPTIONS: tuple[Option, ...] = (
    *_family_options(),
    Option("prefix", "str", "har", "topic prefix: <prefix>/<id>/accel etc."),
    Option("hop", "int", 20, "samples between consecutive windows of a device (1-80)", "N"),
    Option(
        "max_gap",
        "float",
        1.0,
        "a timestamp jump longer than this restarts the device's window",
        "SECONDS",
    ),
    Option(
        "smoothing",
        "str",
        "hmm",
        "HAR: hmm smooths each device's activity over its recent windows (a sticky-HMM "
        "filter; the window's own answer stays in the prediction's raw object, and "
        "<prefix>/<id>/state tells each change); off publishes each window's own answer",
        "hmm|off",
        choices=("hmm", "off"),
    ),
    Option(
        "smoothing_stay",
        "float",
        SmootherParams.p_stay,
        "HAR smoothing: the filter's probability that the activity continues from one window "
        "to the next (0-1; higher: steadier, slower to follow a change); for windows not "
        f"calibrated by the device's labels (calibrated ones use {CALIBRATED.p_stay:g})",
        "P",
    ),
    Option(
        "smoothing_beta",
        "float",
        SmootherParams.beta,
        "HAR smoothing: the weight of one window as evidence (0-1]; overlapping windows are "
        "not independent, so less than 1; for windows not calibrated by the device's "
        f"labels (calibrated ones use {CALIBRATED.beta:g})",
        "B",
    ),
    Option(
        "incremental",
        "bool",
        True,
        "HAR CNN (also the blend's CNN): compute a device's window from the previous "
        "window's convolutions and the --hop new samples when it continues that window "
        "(same answers, about half the CNN's arithmetic at hop 20; every other window, and "
        "the LSTM, in full)",
    ),
    Option("max_batch", "int", 128, "largest inference batch (power-of-two buckets)", "N"),
    Option(
        "max_wait_ms",
        "float",
        0.0,
        "how long a forming batch waits for more windows (0: run what is queued; batches "
        "grow by themselves under load)",
        "MS",
    ),
    Option("queue_size", "int", 4096, "ready windows waiting for inference (oldest dropped)", "N"),
    Option(
        "device_rate_margin",
        "float",
        DEFAULT_MARGIN,
        "an id may send this many times the model inputs per second of a real device (HAR: "
        "20 Hz / --hop windows/s; text, series: 1 message/s); its excess is dropped as "
        "rate_limited and reported on <prefix>/<id>/errors; 0 turns the limit off",
        "X",
    ),
    Option(
        "device_burst",
        "float",
        DEFAULT_BURST_S,
        "seconds of a real device's model inputs an id may send at once above that rate "
        "(a backlog after an outage or a service restart)",
        "SECONDS",
    ),
    Option(
        "inference_threads",
        "int",
        None,
        "CPU threads JAX computes with (default: half the cores, at least 1, leaving the "
        "rest to the MQTT thread and the broker)",
        "N",
    ),
    Option("max_devices", "int", 10000, "live device buffers per family (LRU evicted)", "N"),
    Option("idle_ttl", "float", 300.0, "evict a device's buffer after this idle time", "SECONDS"),
    Option("max_payload", "int", 65536, "largest accepted payload", "BYTES"),
    Option("qos", "int", 1, "QoS of published predictions and errors", "0|1"),
    Option(
        "metrics_port",
        "int",
        None,
        "serve Prometheus /metrics, and /healthz and /readyz, on this port",
        "PORT",
    ),
    Option(
        "health_port",
        "int",
        None,
        "serve /healthz and /readyz (without /metrics) on this port",
        "PORT",
    ),
    Option(
        "metrics_host", "str", "127.0.0.1", "address of the metrics and health endpoints", "HOST"
    ),
    Option(
        "embedded_broker",
        "bool",
        True,
        "without --broker, start an embedded broker on 127.0.0.1:1883 when none listens",
    ),
    Option("connect_timeout", "float", 30.0, "give up if no broker answers at start", "SECONDS"),
    Option(
        "slow_handler_ms",
        "float",
        250.0,
        "log and count a message whose handling blocks the MQTT thread longer than this",
        "MS",
    ),
    Option(
        "stop_timeout",
        "float",
        30.0,
        "longest a stop (SIGTERM) may take; work still running then is abandoned (exit 3)",
        "SECONDS",
    ),
    Option(
        "state_file",
        "str",
        None,
        "where a stop saves every device's partial window and a start restores it, so a "
        "planned restart loses no window (default: $XDG_STATE_HOME/harstream/<client-id>"
        ".state, else ~/.local/state/harstream/<client-id>.state; '' turns it off)",
        "PATH",
    ),
    Option(
        "calibration_store",
        "str",
        None,
        "the SQLite file that keeps each device's HAR calibration (from its labels) across "
        "restarts (default: $XDG_STATE_HOME/harstream/calibrations.sqlite, else "
        "~/.local/state/harstream/calibrations.sqlite; '' keeps calibrations in memory only)",
        "PATH",
    ),
    Option(
        "state_max_age",
        "float",
        300.0,
        "discard a state file older than this at start (its readings are long gone)",
        "SECONDS",
    ),
    Option(
        "summary_every",
        "float",
        60.0,
        "log a one-line summary (devices, messages/s, windows/s, latency p50/p99, errors and "
        "drops by kind) every this many seconds; 0 turns it off",
        "SECONDS",
    ),
    Option(
        "rtt_warn_ms",
        "float",
        20.0,
        "warn at start when a round trip through the broker (90th percentile of 20 QoS 1 "
        "probes) is longer than this (Mosquitto without set_tcp_nodelay: 41-48 ms)",
        "MS",
    ),
    Option(
        "reload_topic",
        "bool",
        False,
        "also reload the model checkpoints (as SIGHUP does) on any message to "
        "<prefix>/service/reload; let only operators publish there (broker ACL)",
    ),
    Option("log_json", "bool", False, "log one JSON object per line"),
)


def model_paths(values: dict[str, Any]) -> dict[str, Path]:
    """Take each family's checkpoint option (``model``, ``text_model``, ...) out of resolved
    ``values``: ``{family: path}`` for the ones given."""
    from harstream import families

    given = {f.name: values.pop(f.model_option) for f in families.FAMILIES}
    return {name: path for name, path in given.items() if path is not None}


def _default(name: str) -> Any:
    """The default of the serve option ``name``: :data:`SERVE_OPTIONS` is the one place
    that holds it, for flags, environment, TOML and in-process ``ServeConfig`` alike."""
    return next(opt.default for opt in SERVE_OPTIONS if opt.name == name)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one ``harstream serve`` instance (see :data:`SERVE_OPTIONS` for meanings).

    ``broker`` is a :class:`stream.connection.BrokerConfig`; None means the local default.
    ``state_file`` None saves no state (in-process services, tests); ``harstream serve``
    fills in the per-user default path unless it is given as ''. The same goes for
    ``calibration_store`` (None: calibrations live in memory only; a
    :class:`stream.calibration_store.CalibrationStore` is used as it is).
    """

    broker: Any = None
    families: list[str] | None = _default("families")
    # family -> checkpoint folder (its --model option); a family not in it serves its
    # shipped model
    models: Mapping[str, Path] = field(default_factory=dict)
    prefix: str = _default("prefix")
    hop: int = _default("hop")
    max_gap: float = _default("max_gap")
    smoothing: str = _default("smoothing")
    smoothing_stay: float = _default("smoothing_stay")
    smoothing_beta: float = _default("smoothing_beta")
    incremental: bool = _default("incremental")
    max_batch: int = _default("max_batch")
    max_wait_ms: float = _default("max_wait_ms")
    queue_size: int = _default("queue_size")
    device_rate_margin: float = _default("device_rate_margin")
    device_burst: float = _default("device_burst")
    inference_threads: int | None = _default("inference_threads")
    max_devices: int = _default("max_devices")
    idle_ttl: float = _default("idle_ttl")
    max_payload: int = _default("max_payload")
    qos: int = _default("qos")
    metrics_port: int | None = _default("metrics_port")
    health_port: int | None = _default("health_port")
    metrics_host: str = _default("metrics_host")
    embedded_broker: bool = _default("embedded_broker")
    connect_timeout: float = _default("connect_timeout")
    slow_handler_ms: float = _default("slow_handler_ms")
    stop_timeout: float = _default("stop_timeout")
    state_file: Path | None = _default("state_file")
    calibration_store: Path | Any = _default("calibration_store")
    state_max_age: float = _default("state_max_age")
    summary_every: float = _default("summary_every")
    rtt_warn_ms: float = _default("rtt_warn_ms")
    reload_topic: bool = _default("reload_topic")
    log_json: bool = _default("log_json")

    def __post_init__(self) -> None:
        checks = [
            (self.hop >= 1, f"hop must be >= 1, got {self.hop}"),
            (self.max_gap > 0, f"max_gap must be > 0, got {self.max_gap}"),
            (self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}"),
            (self.max_wait_ms >= 0, f"max_wait_ms must be >= 0, got {self.max_wait_ms}"),
            (self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}"),
            (
                self.device_rate_margin >= 0,
                f"device_rate_margin must be >= 0 (0: off), got {self.device_rate_margin}",
            ),
            (self.device_burst > 0, f"device_burst must be > 0, got {self.device_burst}"),
            (
                self.inference_threads is None or self.inference_threads >= 1,
                f"inference_threads must be >= 1, got {self.inference_threads}",
            ),
            (self.max_devices >= 1, f"max_devices must be >= 1, got {self.max_devices}"),
            (self.idle_ttl > 0, f"idle_ttl must be > 0, got {self.idle_ttl}"),
            (self.max_payload >= 16, f"max_payload must be >= 16, got {self.max_payload}"),
            (self.qos in (0, 1), f"qos must be 0 or 1, got {self.qos}"),
            (
                not (self.health_port and self.health_port == self.metrics_port),
                "health_port must differ from metrics_port (which serves /healthz and /readyz too)",
            ),
            (self.connect_timeout > 0, "connect_timeout must be > 0"),
            (self.slow_handler_ms > 0, f"slow_handler_ms must be > 0, got {self.slow_handler_ms}"),
            (self.stop_timeout > 0, f"stop_timeout must be > 0, got {self.stop_timeout}"),
            (self.state_max_age > 0, f"state_max_age must be > 0, got {self.state_max_age}"),
            (
                self.summary_every >= 0,
                f"summary_every must be >= 0 (0: off), got {self.summary_every}",
            ),
            (self.rtt_warn_ms >= 0, f"rtt_warn_ms must be >= 0, got {self.rtt_warn_ms}"),
        ]
        from harstream import families

        unknown = sorted(set(self.families or ()) - set(families.names()))
        checks.append(
            (not unknown, f"unknown families {unknown}; expected some of {families.names()}")
        )
        checks.append(
            (
                self.smoothing in ("hmm", "off"),
                f"smoothing must be hmm or off, not {self.smoothing}",
            )
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            SmootherParams(p_stay=self.smoothing_stay, beta=self.smoothing_beta)
        except ValueError as exc:
            raise ConfigError(f"smoothing: {exc}") from None
        try:
            check_prefix(self.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
