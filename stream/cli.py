"""``harstream serve``: flags, environment, TOML file, signals and exit codes."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from harstream.stream.config import (
    SERVE_OPTIONS,
    ConfigError,
    ServeConfig,
    add_options,
    default_calibration_store,
    default_state_file,
    load_toml,
    model_paths,
    resolve,
    unknown_keys,
)
from harstream.stream.connection import (
    BROKER_OPTIONS,
    add_broker_arguments,
    broker_config,
    default_client_id,
)
from harstream.stream.nats_input import NATS_OPTIONS, NatsConfig, nats_config

log = logging.getLogger("harstream.stream.serve")

GIL_SWITCH_S = 0.0005  # sys.setswitchinterval for the service process (see run)
EXIT_ABANDONED = 3  # stop had to abandon work (a stuck handler, windows not published)

DESCRIPTION = """\
Serve activity recognition (and the text and series families) over MQTT.

Devices publish accelerometer readings to <prefix>/<id>/accel (JSON or the binary form);
the service answers each 80-sample window on <prefix>/<id>/activity (the activity smoothed
over the device's recent windows, and the window's own answer as raw; --smoothing off for
the window's own only), keeps the device's current activity retained on
<prefix>/<id>/state, reports bad input on <prefix>/<id>/errors and keeps a retained
online/offline status on <prefix>/service/status.
Settings come from flags, then HARSTREAM_* environment variables, then the TOML file of
--config (keys named like the flags: max_batch = 64), then the defaults shown.
Without --broker it uses 127.0.0.1:1883 and starts an embedded broker there when nothing
listens (--no-embedded-broker turns that off).

SIGINT/SIGTERM finish queued windows, save every device's partial window to
--state-file, publish 'offline' and exit 0; the next start with the same --client-id
restores them and the broker delivers what came meanwhile, so a planned restart loses no
window (with a broker that queues for the persistent session, such as Mosquitto). A stop
takes at most --stop-timeout seconds.

With --nats it is one of several workers: readings come from a NATS JetStream stream that
nats-server's MQTT listener fills (examples/nats/nats-server.conf), each device on one
worker; workers share the partitions through leases and hand buffers over when one stops
(docs/scale-out.md). Results still go out over MQTT, to that listener.

Before loading the models it checks the broker and names what is wrong in one line. Exit
status: 0 after a clean stop, 1 when the service cannot start otherwise, 2 for an invalid
configuration, 3 when a stop had to abandon work, 4 when the broker cannot be reached
(name resolution, connection refused, timed out; may pass by itself), 5 when it refuses
the login (check the credentials), 6 for a TLS problem (certificate, or TLS expected or
not).

SIGHUP (or, with --reload-topic, a message to <prefix>/service/reload) reloads the model
checkpoints: each new model is compiled while the old one serves, then swapped in between
two batches, no window lost; a checkpoint that fails to load keeps the old model, and the
retained status says which.
"""

EPILOG = """\
examples:
  harstream serve                                   # local broker, or an embedded one
  harstream serve --broker broker:1883 --families har --metrics-port 9108
  harstream serve --broker mqtts://user@broker:8883 --ca-file ca.pem --model ckpt/har-cnn
  HARSTREAM_MAX_BATCH=64 harstream serve --config serve.toml
  harstream serve --nats nats://127.0.0.1:4222 --broker mqtt://127.0.0.1:1883 --partitions 8
                                                    # one of several workers (docs/scale-out.md)
"""


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``serve`` to the top-level ``harstream`` command."""
    parser = groups[""].add_parser(
        "serve",
        help="run the real-time MQTT service",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="TOML settings file (env HARSTREAM_CONFIG)"
    )
    add_options(parser.add_argument_group("service"), SERVE_OPTIONS)
    add_broker_arguments(parser)
    add_options(parser.add_argument_group("scale-out workers over NATS"), NATS_OPTIONS)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    """The ServeConfig of parsed ``serve`` arguments (flags > env > TOML > defaults)."""
    return configs_from_args(args, env)[0]


def configs_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> tuple[ServeConfig, NatsConfig | None]:
    """The ServeConfig of parsed ``serve`` arguments (flags > env > TOML > defaults), and
    the NatsConfig of a worker behind NATS (None without ``--nats``)."""
    env = os.environ if env is None else env
    toml = load_toml(args.config or env.get("HARSTREAM_CONFIG"))
    unknown = unknown_keys(toml, (*SERVE_OPTIONS, *BROKER_OPTIONS, *NATS_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown keys in the config file: {', '.join(unknown)}")
    values = resolve(SERVE_OPTIONS, args, toml, env)
    nats = nats_config(resolve(NATS_OPTIONS, args, toml, env))
    client_id = serve_client_id(values["prefix"], values["families"])
    if nats is not None:
        # every worker publishes on its own connection to the nats-server MQTT listener,
        # which speaks MQTT 3.1.1 only; there is no embedded broker to fall back on
        # (no '.': nats-server 2.9 closes a connection that publishes a topic with one, and
        # the id is a level of the service's round-trip probe topic)
        client_id = client_id.replace(".", "_") + "-" + nats.worker
        given = getattr(args, "mqtt_version", None) or env.get("HARSTREAM_MQTT_VERSION")
        if not (given or toml.get("mqtt_version")):
            args.mqtt_version = "3.1.1"
        values["embedded_broker"] = False
    broker = broker_config(args, default_client_id=client_id, toml=toml, env=env)
    state_file = values.pop("state_file")
    if nats is not None:
        state_file = ""  # buffers change hands through NATS (stream.nats_input)
    elif state_file is None:
        state_file = default_state_file(broker.client_id, env)
    store = values.pop("calibration_store")
    if nats is not None and store is None:
        # calibrations go where the device's next worker finds them, unless
        # --calibration-store names a file ('' keeps them in memory)
        nats = replace(nats, calibrations=True)
    elif store is None:
        store = default_calibration_store(env)
    models = model_paths(values)
    config = ServeConfig(
        broker=broker,
        models=models,
        state_file=Path(state_file) if state_file else None,
        calibration_store=Path(store) if store else None,
        **values,
    )
    return config, nats


def serve_client_id(prefix: str, families: list[str] | None) -> str:
    """The default client id: one per host, prefix and families, stable across restarts.

    The default prefix serving every family keeps the plain ``harstream-serve-<host>`` (so
    its persistent session and state file survive an upgrade); any other pair gets a hash
    of it appended, so that two services on one broker never share an id.
    """
    default_prefix = next(o.default for o in SERVE_OPTIONS if o.name == "prefix")
    if prefix == default_prefix and families is None:
        return default_client_id("serve")
    return default_client_id("serve", (prefix, *sorted(families or ("*",))))


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        doc = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``harstream serve``; returns the exit status."""
    from harstream.models.checkpoint import CheckpointError
    from harstream.stream.preflight import BrokerError
    from harstream.stream.routes import RouteUnavailable
    from harstream.stream.service import Service

    try:
        config, nats = configs_from_args(args)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    if config.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # The MQTT thread and the inference thread take turns on the GIL; a thread that wants
    # it waits up to the switch interval (CPython's default 5 ms) while the other runs
    # Python. Under load each window needs several such hand-overs: at 1,759 devices on 2
    # cores (bench e2e) 0.5 ms cut the service's own median latency from 17 to 4.5 ms.
    sys.setswitchinterval(GIL_SWITCH_S)
    source = None
    if nats is not None:
        from harstream.stream.nats_input import NatsInput

        source = NatsInput(nats, prefix=config.prefix, connect_timeout=config.connect_timeout)
        if nats.calibrations:
            config = replace(config, calibration_store=source.calibration_store())
    service = Service(config, source=source)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: service.request_stop())
    # before start: SIGHUP would end the process by default, and a reload asked for while
    # the models compile runs once the service is up
    signal.signal(signal.SIGHUP, lambda _signum, _frame: service.request_reload())
    try:
        service.start()
    except BrokerError as exc:
        log.error("cannot start: broker %s: %s", config.broker.url, exc)
        service.stop()
        return exc.exit_code
    except (ConfigError, RouteUnavailable, CheckpointError, ConnectionError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        service.stop()
        return 1
    # Everything loaded so far (JAX, Flax, the compiled models: a few hundred thousand
    # objects) lives as long as the process. Without this, each full garbage collection
    # walked all of them: 85-95 ms pauses every few seconds at 2,000 devices (bench e2e),
    # the service's worst latencies. Frozen objects are never scanned again.
    gc.freeze()
    service.wait()
    if service.stop():
        return 0
    # A handler is stuck on paho's thread: nothing more can be done in this process, and
    # interpreter shutdown could wait on that thread, so leave at once.
    logging.shutdown()
    os._exit(EXIT_ABANDONED)
