"""``harstream bench model``: per-call latency and throughput of each model family and its peers.

For each family the jit-compiled ``Predictor`` (exactly what the service calls) is timed
per batch size; for the HAR architectures the same network with the same weights runs
in PyTorch eager and ONNX Runtime in the same run, after an agreement check, timed in
interleaved rounds with the JAX predictor so that outside load hits all of them alike.
Every runtime is timed at each thread count of ``threads`` (1 and one per core by
default): JAX at a count other than this process's runs in a child process
(:mod:`harstream.bench.jax_process`), as ``harstream serve --inference-threads`` would.

A model with incremental programs (the HAR CNN) is also timed stepping each window from
its predecessor's state at each hop of :data:`STEP_HOPS`, at this process's thread count
when ``threads`` holds it, interleaved with the full path: the rows with a ``hop`` and
the report's ``incremental`` section (items/s against the full path in the same run). A
stepped call includes what the service's worker does around it: stacking each window's
state from its own array into the batch and copying each new state back.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harstream.bench import peers as peers_mod
from harstream.bench.jax_process import JaxProcess
from harstream.bench.timing import CallRunner, Runner, Timing, time_interleaved
from harstream.models.runtime import default_cpu_threads

BATCHES = (1, 8, 64, 256)
STEP_HOPS = (20, 40)  # the default --hop, and the --hop 40 of the e2e capacity runs
FAMILIES = ("har-blend", "har-cnn", "har-lstm", "text", "series")
# family -> its shipped checkpoint under models/weights/
SHIPPED = {
    "har-blend": "har-blend",
    "har-cnn": "har-cnn",
    "har-lstm": "har-lstm",
    "text": "text-cnn",
    "series": "series-lstm",
}
RANDOM_HAR_META = {
    "classes": ["Walking", "Jogging", "Stairs", "Sitting", "Standing", "Kicking"],
    "normalization": {"mean": [0.0, 0.0, 0.0], "std": [4.0, 4.0, 4.0]},
    "version": "random-weights",
}


def default_threads() -> tuple[int, ...]:
    """1 thread and all cores: on a shared machine, a multi-threaded runtime can collapse when
    another process holds a core, so each is timed at both and neither is favoured."""
    cores = default_cpu_threads()
    return (1,) if cores == 1 else (1, cores)


@dataclass
class ModelBenchConfig:
    """What to measure; ``seconds`` is the timing budget per family and batch size."""

    families: tuple[str, ...] = ("har-cnn", "har-lstm")
    batches: tuple[int, ...] = BATCHES
    seconds: float = 4.0
    min_calls: int = 30
    warmup: int = 5
    rounds: int = 4
    threads: tuple[int, ...] = field(default_factory=default_threads)
    runtimes: tuple[str, ...] = peers_mod.RUNTIMES
    seed: int = 0


@dataclass
class ModelBenchRun:
    """The JSON report plus the raw per-call timings (for the CDF plot)."""

    report: dict[str, Any]
    timings: dict[tuple[str, str, int], Timing]


def load_family(family: str, max_batch: int, workdir: Path) -> tuple[Any, Path, str, float]:
    """``(predictor, checkpoint, weights, seconds to load and compile)`` for a family name.

    Every family uses its shipped model. A HAR network (CNN, LSTM) missing from the
    installation is replaced by random weights (per-call time does not depend on the
    weight values); any other missing model raises ``LookupError``.
    """
    from harstream.families import WEIGHTS_DIR, load_predictor

    if family not in SHIPPED:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    path, weights = WEIGHTS_DIR / SHIPPED[family], "shipped"
    if not path.is_dir():
        if family not in ("har-cnn", "har-lstm"):  # networks that random weights stand in for
            raise LookupError(f"the shipped {family} model is missing from {path}")
        path, weights = random_har_checkpoint(family, workdir / family), "random"
    start = time.perf_counter()
    try:
        predictor = load_predictor(path, max_batch=max_batch)
    except ModuleNotFoundError as exc:
        raise LookupError(f"the {family} family is not available here ({exc})") from None
    return predictor, path, weights, time.perf_counter() - start


def random_har_checkpoint(arch: str, path: Path, seed: int = 1) -> Path:
    """A HAR checkpoint with random weights, written through the normal checkpoint code.

    Initialisation runs under ``jax.jit``: eagerly, each of its operations would compile
    on its own (tens of seconds on a busy 2-core machine).
    """
    import jax

    from harstream.models.har import checkpoint, network

    model = network.build(arch, {"num_classes": 6})
    params = jax.jit(lambda: network.init_params(model, seed=seed))()
    meta = {**RANDOM_HAR_META, "name": arch}
    return checkpoint.save(path, arch, {"num_classes": 6}, params, meta)


def sample_input(predictor: Any, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A batch of plausible inputs: m/s^2-scale readings, or token ids within the vocabulary."""
    shape = (batch, *predictor.item_shape)
    if predictor.item_kind == "i":
        vocab = int(predictor.meta.get("arch_config", {}).get("vocab_size", 1))
        return rng.integers(0, vocab, size=shape, dtype=np.int32)
    return rng.normal(0.0, 4.0, size=shape).astype(np.float32)


def run(config: ModelBenchConfig, log=print) -> ModelBenchRun:
    """Measure every family of ``config``; peers that are not installed are skipped."""
    rng = np.random.default_rng(config.seed)
    results: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    timings: dict[tuple[str, str, int], Timing] = {}
    for runtime, why in peers_mod.missing_runtimes(config.runtimes).items():
        skipped[runtime] = why
    with tempfile.TemporaryDirectory(prefix="harstream-bench-") as tmp:
        for family in config.families:
            log(f"{family}: loading and compiling buckets up to {max(config.batches)} ...")
            try:
                predictor, path, weights, ready_s = load_family(
                    family, max(config.batches), Path(tmp)
                )
            except LookupError as exc:
                skipped[family] = str(exc)
                log(f"{family}: skipped ({exc})")
                continue
            compile_s = sum(predictor.compile_seconds.values())
            models.append(
                {
                    "family": family,
                    "model": predictor.tag,
                    "weights": weights,
                    "load_s": round(ready_s - compile_s, 4),
                    "compile_s": {
                        str(b): round(s, 4) for b, s in predictor.compile_seconds.items()
                    },
                    "ready_s": round(ready_s, 4),
                }
            )
            family_peers: list[peers_mod.Peer] = []
            if predictor.meta.get("arch") in peers_mod.PEER_ARCHS:
                family_peers = peers_mod.build_peers(predictor, config.threads, config.runtimes)
            jax_runners, children = jax_runtimes(predictor, path, config.threads)
            if default_cpu_threads() in config.threads:
                jax_runners.update(step_runners(predictor))
            try:
                diffs = peers_mod.check_peers(predictor, family_peers, config.seed)
                diffs.update(check_jax_children(predictor, children, config.seed))
                if diffs:
                    models[-1]["peer_max_abs_diff"] = {
                        k: float(f"{v:.3g}") for k, v in diffs.items()
                    }
                    log(f"{family}: runtimes agree (max abs diff {max(diffs.values()):.2g})")
                runners: dict[str, Runner] = dict(jax_runners)
                runners.update({p.key: CallRunner(p.call, p.before) for p in family_peers})
                for batch in config.batches:
                    x = sample_input(predictor, batch, rng)
                    measured = time_interleaved(
                        runners,
                        x,
                        seconds=config.seconds,
                        min_calls=config.min_calls,
                        warmup=config.warmup,
                        rounds=config.rounds,
                    )
                    rows = _rows(family, batch, measured, family_peers)
                    results += rows
                    for key, timing in measured.items():
                        timings[(family, key, batch)] = timing
                    log(_format_rows(rows))
            finally:
                for child in children:
                    child.close()
    report = {
        "results": results,
        "ratios": peer_ratios(results),
        "incremental": step_ratios(results),
        "models": models,
        "skipped": skipped,
        "settings": _settings(config),
    }
    return ModelBenchRun(report=report, timings=timings)


def jax_key(threads: int) -> str:
    return f"jax/{threads}t"


def jax_runtimes(
    predictor: Any, checkpoint: Path, threads: tuple[int, ...]
) -> tuple[dict[str, Runner], list[JaxProcess]]:
    """A runner per JAX thread count: ``predictor`` itself for this process's count, a
    child process (the same checkpoint) for any other; the children must be closed."""
    here = default_cpu_threads()
    runners: dict[str, Runner] = {}
    children: list[JaxProcess] = []
    try:
        for n in dict.fromkeys(threads):
            if n == here:
                runners[jax_key(n)] = CallRunner(predictor.predict_valid)
            else:
                children.append(JaxProcess(checkpoint, n, predictor.max_batch))
                runners[jax_key(n)] = children[-1]
    except BaseException:
        for child in children:
            child.close()
        raise
    return runners, children


def step_key(hop: int) -> str:
    return f"jax-hop{hop}/{default_cpu_threads()}t"


class StepCall:
    """A stepped call as the service's worker makes it, for batches of ``x``'s size: each
    of the batch's windows has its own state array (the device's), stacked into the
    call's state batch before and refreshed from the call's new states after."""

    def __init__(self, stepper: Any) -> None:
        self._stepper = stepper
        self._states: list[np.ndarray] = []
        self._batch = np.zeros((0,))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if len(self._states) != n:  # a new batch size: every device's first window in full
            *_, states = self._stepper.full(x)
            self._states = [s.copy() for s in states]
            self._batch = self._stepper.zero_states(n)
        batch = self._batch
        for i, state in enumerate(self._states):
            batch[i] = state
        probs, *_, states = self._stepper.step(x, batch)
        for state, new in zip(self._states, states, strict=True):
            state[...] = new
        return probs


def step_runners(predictor: Any) -> dict[str, Runner]:
    """A runner per hop of :data:`STEP_HOPS` that ``predictor`` can step, at this
    process's thread count."""
    steppers = {hop: predictor.stepper(hop) for hop in STEP_HOPS}
    return {step_key(h): CallRunner(StepCall(s)) for h, s in steppers.items() if s is not None}


def step_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family, batch and hop: stepped items/s against the full path at the same
    thread count, from the same run (``speedup``), the full path's per-call p50 over the
    stepped one's (``p50_speedup``) and its CPU time per item over the stepped one's
    (``cpu_speedup``, the steadiest of the three on a shared machine)."""
    full = {
        (r["family"], r["batch"], r["threads"]): r
        for r in results
        if r["runtime"] == "jax" and "hop" not in r
    }
    out = []
    for r in results:
        base = full.get((r["family"], r["batch"], r["threads"]))
        if "hop" not in r or base is None:
            continue
        out.append(
            {
                "family": r["family"],
                "batch": r["batch"],
                "hop": r["hop"],
                "threads": r["threads"],
                "full_items_per_s": base["items_per_s"],
                "step_items_per_s": r["items_per_s"],
                "speedup": round(r["items_per_s"] / base["items_per_s"], 3),
                # per-call medians: steadier than items/s when other jobs share the machine
                "p50_speedup": round(base["p50_ms"] / r["p50_ms"], 3),
            }
        )
        if "cpu_us_per_item" in r and "cpu_us_per_item" in base:
            out[-1]["cpu_speedup"] = round(base["cpu_us_per_item"] / r["cpu_us_per_item"], 3)
    return out


def check_jax_children(
    predictor: Any, children: list[JaxProcess], seed: int = 0
) -> dict[str, float]:
    """The same model at another thread count must compute the same outputs."""
    rng = np.random.default_rng(seed)
    x = sample_input(predictor, 16, rng)
    reference = predictor.predict(x)
    return {
        jax_key(c.threads): peers_mod.check_agreement(reference, c.predict(x), jax_key(c.threads))
        for c in children
    }


def _rows(
    family: str, batch: int, measured: dict[str, Timing], peers: list[peers_mod.Peer]
) -> list[dict[str, Any]]:
    rows, jax_p50 = [], {}
    for key, timing in measured.items():
        if key.startswith("jax/"):
            threads = int(key[4:-1])
            row = {"family": family, "runtime": "jax", "batch": batch, "threads": threads}
            row.update(timing.summary())
            jax_p50[threads] = row["p50_ms"]
            rows.append(row)
        elif key.startswith("jax-hop"):
            hop, threads = key[7:-1].split("/")
            row = {"family": family, "runtime": "jax", "batch": batch, "threads": int(threads)}
            row["hop"] = int(hop)
            row.update(timing.summary())
            rows.append(row)
    for peer in peers:
        row = {"family": family, "runtime": peer.runtime, "batch": batch, "threads": peer.threads}
        row.update(measured[peer.key].summary())
        # like for like: JAX at the same thread count when it was timed, else its best
        jax = jax_p50.get(peer.threads, min(jax_p50.values()))
        row["p50_ratio_vs_jax"] = round(row["p50_ms"] / jax, 3)
        rows.append(row)
    return rows


def _settings(config: ModelBenchConfig) -> dict[str, Any]:
    import jax

    versions = {"jax": jax.__version__, "numpy": np.__version__}
    for name in ("torch", "onnxruntime"):
        if name not in peers_mod.missing_runtimes((name,)):
            versions[name] = __import__(name).__version__
    return {
        "batches": list(config.batches),
        "seconds_per_batch": config.seconds,
        "min_calls": config.min_calls,
        "warmup_calls": config.warmup,
        "interleaved_rounds": config.rounds,
        "threads": list(config.threads),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()} {platform.processor()}".strip(),
        "versions": versions,
    }


def _format_rows(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {r['family']:<8} {_path(r):<12} threads={r['threads']!s:<11} batch={r['batch']:<4}"
        f" p50={r['p50_ms']:9.3f} ms  p99={r['p99_ms']:9.3f} ms  {r['items_per_s']:11.1f} items/s"
        + (f"  x{r['p50_ratio_vs_jax']:.2f} of jax" if "p50_ratio_vs_jax" in r else "")
        for r in rows
    )


def _path(row: dict[str, Any]) -> str:
    """The runtime, or for a stepped row ``jax hop N``."""
    return f"jax hop {row['hop']}" if "hop" in row else row["runtime"]


def peer_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family, batch and peer runtime: its best thread setting against JAX's best.

    ``p50_ratio`` is peer p50 / JAX p50 (above 1: harstream is faster per call);
    ``throughput_ratio`` is peer items/s / JAX items/s (below 1: harstream does more).
    """
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in results:
        if "hop" in r:  # the incremental path has no peer counterpart
            continue
        key = (r["family"], r["batch"], r["runtime"])
        if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
            best[key] = r
    out = []
    for (family, batch, runtime), r in best.items():
        if runtime == "jax":
            continue
        j = best[(family, batch, "jax")]
        out.append(
            {
                "family": family,
                "batch": batch,
                "runtime": runtime,
                "threads": r["threads"],
                "jax_threads": j["threads"],
                "jax_p50_ms": j["p50_ms"],
                "peer_p50_ms": r["p50_ms"],
                "p50_ratio": round(r["p50_ms"] / j["p50_ms"], 3),
                "throughput_ratio": round(r["items_per_s"] / j["items_per_s"], 3),
            }
        )
    return out


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a ``bench model`` report."""
    lines = ["model     ready_s  load_s  compile_s per bucket"]
    for m in report["models"]:
        buckets = " ".join(f"{b}:{s:.2f}" for b, s in m["compile_s"].items())
        lines.append(
            f"{m['family']:<9} {m['ready_s']:7.2f} {m['load_s']:7.3f}  {buckets}"
            f"  ({m['model']}, {m['weights']} weights)"
        )
    lines += ["", "per call (results on host):", _format_rows(report["results"])]
    if report["ratios"]:
        lines += ["", "each runtime at its best thread setting (ratio = peer / harstream):"]
        lines += [
            f"  {r['family']:<8} batch={r['batch']:<4} {r['runtime']:<12} threads={r['threads']:<2}"
            f" p50 {r['peer_p50_ms']:9.3f} ms vs jax ({r['jax_threads']}t)"
            f" {r['jax_p50_ms']:9.3f} ms"
            f"  time x{r['p50_ratio']:.2f}  throughput x{r['throughput_ratio']:.2f}"
            for r in report["ratios"]
        ]
    if report.get("incremental"):
        lines += [
            "",
            "incremental (each window stepped from its predecessor's state) vs full path:",
        ]
        lines += [
            f"  {r['family']:<8} batch={r['batch']:<4} hop={r['hop']:<3} threads={r['threads']:<2}"
            f" {r['step_items_per_s']:11.1f} items/s vs {r['full_items_per_s']:11.1f}"
            f"  x{r['speedup']:.2f} (p50 per call x{r['p50_speedup']:.2f}"
            + (f", CPU per item x{r['cpu_speedup']:.2f})" if "cpu_speedup" in r else ")")
            for r in report["incremental"]
        ]
    for what, why in report["skipped"].items():
        lines.append(f"skipped {what}: {why}")
    return "\n".join(lines)
