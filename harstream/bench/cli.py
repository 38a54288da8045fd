"""``harstream bench model|e2e|train``: the benchmark commands.

Arguments only; the measuring modules (and JAX, PyTorch, paho) are imported when a
benchmark runs, so that ``harstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harstream.extras import require

FAMILY_CHOICES = ("har-blend", "har-cnn", "har-lstm", "text", "series", "all")


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``bench`` and its ``model``, ``e2e`` and ``train`` subcommands."""
    bench = groups[""].add_parser(
        "bench",
        help="measure latency and throughput, beside the alternatives",
        description=(
            "Measure model latency (beside PyTorch and ONNX Runtime), end-to-end latency and "
            "capacity over MQTT, and training speed. Peers need the optional extra: "
            "pip install -e '.[bench]'."
        ),
    )
    sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    _register_model(sub)
    _register_e2e(sub)
    _register_train(sub)


def _register_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="per-call latency and items/s per family and batch size, with peers",
        description=(
            "Time the jit-compiled predictor of each family per batch size (p50/p99 per call "
            "after warm-up, results brought back to host memory, items/s), and, for the HAR "
            "models, the same network with the same weights in PyTorch eager and ONNX Runtime "
            "(CPU) in the same run, after checking that their outputs match, timed in "
            "interleaved rounds. Every runtime, JAX included, runs at 1 thread and at one "
            "thread per core (--threads; JAX at a count other than this process's runs in "
            "a child process, as 'harstream serve --inference-threads' would). Also reports "
            "model load time and compile time per batch bucket, using the shipped models."
        ),
    )
    p.add_argument(
        "--family",
        choices=FAMILY_CHOICES,
        default="all",
        help="model family to measure; 'all' skips families whose model is not shipped "
        "(default: all)",
    )
    p.add_argument(
        "--batches",
        type=_int_list,
        default=(1, 8, 64, 256),
        help="comma-separated batch sizes (default: 1,8,64,256)",
    )
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=4.0,
        help="timing budget per family and batch size, shared by all runtimes (default: 4)",
    )
    p.add_argument(
        "--min-calls", type=int, default=30, help="timed calls per runtime at least (default: 30)"
    )
    p.add_argument(
        "--threads",
        type=_int_list,
        default=None,
        help="CPU thread counts to time every runtime at (default: 1 and the number of cores)",
    )
    p.add_argument("--no-peers", action="store_true", help="time harstream only")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON to OUT")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw latency CDFs to PNG (needs matplotlib: the train extra)",
    )
    p.set_defaults(func=_run_model)


def _require_plotting(args: argparse.Namespace) -> None:
    """Fail before the benchmark runs, not after, when --plot cannot be drawn."""
    if args.plot:
        require(f"harstream bench {args.bench} --plot", "matplotlib")


def _run_model(args: argparse.Namespace) -> int:
    _require_plotting(args)
    from harstream.bench import model_bench
    from harstream.bench.peers import PeerMismatchError

    families = model_bench.FAMILIES if args.family == "all" else (args.family,)
    config = model_bench.ModelBenchConfig(
        families=families,
        batches=args.batches,
        seconds=args.seconds,
        min_calls=args.min_calls,
        runtimes=() if args.no_peers else model_bench.peers_mod.RUNTIMES,
    )
    if args.threads:
        config.threads = args.threads
    try:
        run = model_bench.run(config, log=_progress)
    except PeerMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(model_bench.format_report(run.report))
    _write_json(args.json, run.report)
    if args.plot:
        from harstream.bench import plots

        plots.latency_cdf(run.timings, args.plot)
        print(f"wrote {args.plot}")
    return 0


E2E_DESCRIPTION = """\
Start a private MQTT broker (Mosquitto when installed) on a free loopback port and
the service, then publisher processes streaming N simulated devices; time every window
from publishing its last sample to receiving its prediction. Also measures a naive
baseline (the service with batching off: one model call per window, as each window
completes) under the same load. The services compute windows incrementally unless
--no-incremental; --compare-full also measures the batched service computing every window
in full, in the same run. --broker uses that broker instead; --no-service uses a
service already running there (the naive baseline still starts its own, on its own
topic prefix). --sweep raises the number of devices until p99 passes --bound-ms, windows
are lost or the load generator falls behind, and reports the largest number that held.
The publishers speak MQTT 3.1.1 through a lean client of their own (pre-encoded packets,
so that they leave the CPU to the service): of the broker connection options below,
--mqtt-version sets the services' protocol, --keepalive and --max-inflight only that of
the client that waits for a service to come online. --engine nats runs the load through
a private nats-server started from examples/nats/nats-server.conf (its MQTT listener;
readings kept in JetStream) with --workers 'harstream serve --nats' workers, reports each
worker's windows and CPU, and has no naive baseline. Every point reports the broker's CPU
too.
"""

E2E_EPILOG = """\
examples:
  harstream bench e2e --devices 200                          # 4,000 msg/s, one sample each
  harstream bench e2e --sweep --devices 500 --samples-per-message 20 --json e2e.json
  harstream bench e2e --sweep --devices 1000 --samples-per-message 20 --compare-full --no-naive
  harstream bench e2e --broker mqtt://127.0.0.1:1883 --no-service --devices 50
  harstream bench e2e --engine nats --workers 3 --devices 1000 --samples-per-message 20
"""


def _register_e2e(sub: argparse._SubParsersAction) -> None:
    from harstream.stream.connection import add_broker_arguments

    p = sub.add_parser(
        "e2e",
        help="end-to-end window latency and capacity over MQTT, batched vs naive",
        description=E2E_DESCRIPTION,
        epilog=E2E_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default: 200)")
    p.add_argument("--rate", type=float, default=20.0, help="samples/s per device (default: 20)")
    p.add_argument(
        "--duration", type=_positive_float, default=10.0, help="seconds per run (default: 10)"
    )
    p.add_argument(
        "--samples-per-message",
        type=int,
        default=1,
        metavar="K",
        help="samples per MQTT message, 1-80 (default: 1)",
    )
    p.add_argument(
        "--publishers", type=int, default=2, help="load-generator processes (default: 2)"
    )
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="publish QoS (default: 1)")
    p.add_argument(
        "--hop",
        type=int,
        default=20,
        help="the services' hop: samples between windows (default: 20)",
    )
    p.add_argument(
        "--drain",
        type=_positive_float,
        default=3.0,
        help="seconds to wait for the last predictions (default: 3)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="untimed seconds of the same load before measuring each service; 0 for none "
        "(default: 3)",
    )
    p.add_argument("--prefix", default="har", help="topic prefix (default: har)")
    p.add_argument(
        "--no-service", action="store_true", help="use a service already running on --broker"
    )
    p.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    p.add_argument(
        "--engine",
        choices=("mosquitto", "nats"),
        default="mosquitto",
        help="mosquitto: one service on a private Mosquitto; nats: --workers services behind "
        "a private nats-server from examples/nats (its MQTT listener and JetStream); "
        "default: mosquitto",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --engine nats: harstream serve --nats workers (default: 1)",
    )
    p.add_argument(
        "--max-batch", type=int, default=128, help="the service's max batch (default: 128)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="the service's batching wait in ms (default: 0, the service's default)",
    )
    p.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="the services' JAX CPU threads (default: theirs, half the cores)",
    )
    p.add_argument("--model", type=Path, help="HAR checkpoint to serve (default: the shipped one)")
    p.add_argument(
        "--incremental",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve with 'harstream serve --incremental' (default); --no-incremental "
        "computes every window in full, as before",
    )
    p.add_argument(
        "--compare-full",
        action="store_true",
        help="also measure the batched service with --no-incremental, in the same run and "
        "under the same load (the 'full' phase; with --sweep, its own capacity)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="raise --devices by --sweep-factor until p99 > --bound-ms or windows are lost",
    )
    p.add_argument(
        "--bound-ms", type=_positive_float, default=50.0, help="sweep p99 bound (default: 50)"
    )
    p.add_argument(
        "--sweep-factor", type=float, default=1.5, help="device growth per step (default: 1.5)"
    )
    p.add_argument(
        "--max-devices", type=int, default=20000, help="stop the sweep here (default: 20000)"
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON to OUT")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw latency and throughput vs devices (needs matplotlib: the train extra)",
    )
    add_broker_arguments(p, persistent=False, omit=("client_id",))  # each connection has its own
    p.set_defaults(func=_run_e2e)


def _run_e2e(args: argparse.Namespace) -> int:
    _require_plotting(args)
    from harstream.bench import e2e_bench
    from harstream.stream.config import ConfigError
    from harstream.stream.connection import broker_config

    try:
        config = e2e_bench.E2EConfig(
            devices=args.devices,
            rate_hz=args.rate,
            duration_s=args.duration,
            samples_per_message=args.samples_per_message,
            publishers=args.publishers,
            qos=args.qos,
            hop=args.hop,
            drain_s=args.drain,
            warmup_s=args.warmup,
            prefix=args.prefix,
            service=not args.no_service,
            naive=not args.no_naive,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            inference_threads=args.inference_threads,
            model=args.model,
            sweep=args.sweep,
            bound_ms=args.bound_ms,
            sweep_factor=args.sweep_factor,
            max_devices=args.max_devices,
            incremental=args.incremental,
            compare_full=args.compare_full,
            engine=args.engine,
            workers=args.workers,
        )
        broker = None
        if args.broker or args.no_service:
            broker = broker_config(args, default_client_id="harstream-bench")
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = e2e_bench.run(config, broker, log_line=_progress)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(e2e_bench.format_report(report))
    _write_json(args.json, report)
    if args.plot:
        from harstream.bench import plots

        sweep = report.get("sweep") or {
            "points": [report],
            "naive_points": [report["naive"]] if "naive" in report else [],
        }
        series = {"batched": sweep["points"], "naive": sweep.get("naive_points", [])}
        plots.e2e_curves(series, args.plot, bound_ms=config.bound_ms)
        print(f"wrote {args.plot}")
    return 0


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="training samples/s of the HAR models, JAX/optax beside PyTorch",
        description=(
            "Training speed of the HAR models at batch 400 (as in the article) with "
            "harstream's optax training loop, and PyTorch with the same architecture and loop "
            "in the same run when it is installed. Synthetic windows; the first epoch is a "
            "warm-up (it includes compilation) and is not timed."
        ),
    )
    p.add_argument(
        "--family",
        choices=("har-cnn", "har-lstm", "all"),
        default="har-cnn",
        help="architecture to train (default: har-cnn)",
    )
    p.add_argument("--batch", type=int, default=400, help="batch size (default: 400)")
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (default: 20)")
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs, the first one untimed (default: 3)"
    )
    p.add_argument(
        "--torch-threads",
        type=_int_list,
        default=None,
        help="PyTorch thread counts to time (default: 1 and the number of cores)",
    )
    p.add_argument("--no-peers", action="store_true", help="time harstream (JAX) only")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON to OUT")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from harstream.bench import train_bench

    try:
        config = train_bench.TrainBenchConfig(
            archs=train_bench.ARCHS if args.family == "all" else (args.family,),
            batch=args.batch,
            steps=args.steps,
            epochs=args.epochs,
            with_torch=not args.no_peers,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.torch_threads:
        config.torch_threads = args.torch_threads
    report = train_bench.run(config, log=_progress)
    print(train_bench.format_rows(report["results"]))
    for what, why in report["skipped"].items():
        print(f"skipped {what}: {why}")
    _write_json(args.json, report)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
