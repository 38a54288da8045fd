"""``harstream bench train``: training samples/s of the HAR models, JAX/optax beside PyTorch.

The JAX side is harstream's own training loop (``models.training.fit``: one jitted step
of loss, gradients and an optax update, the loss read back every step); PyTorch runs the
same architecture with the same loop shape (shuffle, step, ``loss.item()``), Adam with
the same learning rate, on the same synthetic windows. Training speed does not depend on
the data values, so no data set is needed. The first epoch is a warm-up (it includes
JAX's compilation) and is reported separately.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harstream.bench import peers as peers_mod
from harstream.bench.model_bench import RANDOM_HAR_META, default_threads

ARCHS = ("har-cnn", "har-lstm")
LEARNING_RATE = 1e-3


@dataclass
class TrainBenchConfig:
    """``steps`` per epoch at ``batch``; ``epochs`` includes the warm-up epoch."""

    archs: tuple[str, ...] = ("har-cnn",)
    batch: int = 400
    steps: int = 20
    epochs: int = 3
    torch_threads: tuple[int, ...] = field(default_factory=default_threads)
    with_torch: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.steps < 1 or self.epochs < 2:
            raise ValueError("batch and steps must be >= 1 and epochs >= 2 (one is warm-up)")


def synthetic_windows(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random m/s^2-scale windows ``(n, 80, 3)`` and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 4.0, size=(n, 80, 3)).astype(np.float32)
    return x, rng.integers(0, classes, size=n).astype(np.int32)


def jax_training(arch: str, config: TrainBenchConfig) -> dict[str, Any]:
    """Samples/s of ``models.training.fit`` with Adam on ``arch``."""
    import optax

    from harstream.models.har import network
    from harstream.models.training import classifier_loss, fit

    model = network.build(arch, {"num_classes": len(RANDOM_HAR_META["classes"])})
    x, y = synthetic_windows(config.batch * config.steps, model.num_classes, config.seed)
    result = fit(
        classifier_loss(model),
        network.init_params(model, seed=config.seed),
        (x, y),
        optax.adam(LEARNING_RATE),
        epochs=config.epochs,
        batch_size=config.batch,
        seed=config.seed,
        monitor="loss",
        patience=config.epochs + 1,
        progress=False,
    )
    return _row(arch, "jax", "xla-default", config, result.epoch_seconds)


def torch_training(arch: str, config: TrainBenchConfig, threads: int) -> dict[str, Any]:
    """Samples/s of the PyTorch twin of ``arch`` trained with the same loop shape."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    from harstream.bench import torch_har

    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    norm = RANDOM_HAR_META["normalization"]
    classes = len(RANDOM_HAR_META["classes"])
    model = torch_har.build(
        arch, {"num_classes": classes}, np.asarray(norm["mean"]), np.asarray(norm["std"])
    )
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x, y = synthetic_windows(config.batch * config.steps, classes, config.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    rng = np.random.default_rng(config.seed)

    def epoch() -> None:
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(config.steps):
            idx = order[i * config.batch : (i + 1) * config.batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            float(loss.item())

    return _row(arch, "torch", threads, config, _time_epochs(epoch, config.epochs))


def _time_epochs(epoch: Callable[[], None], epochs: int) -> list[float]:
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        epoch()
        seconds.append(time.perf_counter() - start)
    return seconds


def _row(
    arch: str, runtime: str, threads: Any, config: TrainBenchConfig, epoch_seconds: list[float]
) -> dict[str, Any]:
    timed = epoch_seconds[1:]
    return {
        "family": arch,
        "runtime": runtime,
        "threads": threads,
        "batch": config.batch,
        "samples_per_s": round(config.batch * config.steps * len(timed) / sum(timed), 1),
        "step_ms": round(sum(timed) / (config.steps * len(timed)) * 1e3, 2),
        "warmup_epoch_s": round(epoch_seconds[0], 3),
        "epochs_timed": len(timed),
        "steps_per_epoch": config.steps,
    }


def run(config: TrainBenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every architecture of ``config``; PyTorch is skipped when not installed."""
    skipped = peers_mod.missing_runtimes(("torch",)) if config.with_torch else {}
    results = []
    for arch in config.archs:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
        log(f"{arch}: JAX/optax, batch {config.batch} ...")
        results.append(jax_training(arch, config))
        log(format_rows(results[-1:]))
        if config.with_torch and not skipped:
            for threads in config.torch_threads:
                log(f"{arch}: PyTorch, {threads} thread(s) ...")
                results.append(torch_training(arch, config, threads))
                log(format_rows(results[-1:]))
    return {
        "results": results,
        "skipped": skipped,
        "settings": {
            "optimizer": f"Adam, learning rate {LEARNING_RATE}",
            "data": "synthetic windows (training speed does not depend on values)",
            "cpu_count": os.cpu_count(),
            "run_order": "sequential: JAX first, then PyTorch per thread count",
        },
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Human-readable lines of training results."""
    return "\n".join(
        f"  {r['family']:<8} {r['runtime']:<6} threads={r['threads']!s:<11} batch={r['batch']}"
        f"  {r['samples_per_s']:9.1f} samples/s  {r['step_ms']:8.2f} ms/step"
        f"  (warm-up epoch {r['warmup_epoch_s']:.2f} s)"
        for r in rows
    )
