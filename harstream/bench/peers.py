"""Peers: the same HAR model, with the same weights, in the runtimes a user might pick instead.

A comparison is only honest if the peers compute the same function, so every peer is
checked against harstream's ``Predictor`` on the same inputs before it is timed, and a
mismatch stops the benchmark with a ``PeerMismatchError`` instead of producing numbers.
Peers are optional (``pip install -e '.[bench]'``); a runtime that is not installed is
skipped with the reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harstream.bench.timing import Call
from harstream.models.predictor import Predictor

RUNTIMES = ("torch", "onnxruntime")
_REQUIRES = {"torch": ("torch",), "onnxruntime": ("onnx", "onnxruntime")}
PEER_ARCHS = ("har-cnn", "har-lstm")


class PeerMismatchError(RuntimeError):
    """A peer's outputs differ from harstream's: its timings would compare different models."""


@dataclass
class Peer:
    """One runtime at one thread setting; ``before`` applies process-global settings."""

    runtime: str
    threads: int
    call: Call
    before: Callable[[], None] | None = None

    @property
    def key(self) -> str:
        return f"{self.runtime}/{self.threads}t"


def missing_runtimes(runtimes: Sequence[str] = RUNTIMES) -> dict[str, str]:
    """``{runtime: why it is skipped}`` for each requested peer that cannot run here."""
    missing = {}
    for runtime in runtimes:
        absent = [m for m in _REQUIRES[runtime] if importlib.util.find_spec(m) is None]
        if absent:
            missing[runtime] = f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
    return missing


def flax_weights(predictor: Predictor) -> tuple[str, dict[str, Any], Any, np.ndarray, np.ndarray]:
    """``(arch, arch_config, params, mean, std)`` of a HAR predictor, as host arrays."""
    meta = predictor.meta
    if meta.get("family") != "har" or meta.get("arch") not in PEER_ARCHS:
        raise ValueError(
            f"peers exist for the HAR architectures {PEER_ARCHS}, not for "
            f"{meta.get('family')!r}/{meta.get('arch')!r}"
        )
    import jax

    params = jax.tree_util.tree_map(np.asarray, predictor.params)
    norm = meta["normalization"]
    return meta["arch"], dict(meta["arch_config"]), params, norm["mean"], norm["std"]


def build_peers(
    predictor: Predictor, threads: Sequence[int], runtimes: Sequence[str] = RUNTIMES
) -> list[Peer]:
    """One peer per installed runtime and thread count, loaded with ``predictor``'s weights."""
    arch, config, params, mean, std = flax_weights(predictor)
    skipped = missing_runtimes(runtimes)
    peers: list[Peer] = []
    if "torch" in runtimes and "torch" not in skipped:
        from harstream.bench import torch_har

        module = torch_har.build(arch, config, np.asarray(mean), np.asarray(std)).load_flax(params)
        call = torch_har.inference_call(module)
        peers += [Peer("torch", n, call, _torch_threads(n)) for n in threads]
    if "onnxruntime" in runtimes and "onnxruntime" not in skipped:
        from harstream.bench import onnx_har

        graph = onnx_har.build_graph(arch, params, mean, std)
        peers += [
            Peer("onnxruntime", n, onnx_har.inference_call(onnx_har.session(graph, n)))
            for n in threads
        ]
    return peers


def _torch_threads(n: int) -> Callable[[], None]:
    """PyTorch's intra-op thread count is process-global: set it before each of its slices."""

    def apply() -> None:
        import torch

        torch.set_num_threads(n)

    return apply


def check_agreement(
    reference: np.ndarray, candidate: np.ndarray, name: str, atol: float = 2e-4
) -> float:
    """Largest absolute difference of two probability arrays; raise if above ``atol``."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise PeerMismatchError(
            f"{name}: output shape {candidate.shape} differs from harstream's {reference.shape}"
        )
    diff = float(np.max(np.abs(reference - candidate)))
    if not diff <= atol:
        rows = int(np.sum(reference.argmax(-1) != candidate.argmax(-1)))
        raise PeerMismatchError(
            f"{name}: outputs differ from harstream's by up to {diff:.3g} (tolerance {atol:g}; "
            f"{rows} of {len(reference)} predicted classes differ). It is not the same model, "
            "so its timings would not be comparable."
        )
    return diff


def check_peers(predictor: Predictor, peers: Sequence[Peer], seed: int = 0) -> dict[str, float]:
    """Run every peer and harstream on the same windows; ``{peer key: max abs difference}``."""
    if not peers:
        return {}
    x = np.random.default_rng(seed).normal(0.0, 4.0, size=(16, *predictor.item_shape))
    x = x.astype(np.float32)
    reference = predictor.predict(x)
    diffs = {}
    for peer in peers:
        if peer.before is not None:
            peer.before()
        diffs[peer.key] = check_agreement(reference, peer.call(x), peer.key)
    return diffs
