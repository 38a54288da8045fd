"""Batched jit inference with pre-compiled power-of-two batch buckets.

The service batches work from many devices into one call. Compiling per exact batch size
would stall requests on new sizes, so a ``Predictor`` compiles one program per bucket
(1, 2, 4, ... up to ``max_batch``) at load time and pads each call up to the next bucket,
or, where padding would waste more than an eighth of the bucket, splits the batch into
calls of bucket sizes (:func:`call_plan`): padded rows cost as much CPU as real ones.
The forward pass is ``jax.jit`` of a pure ``(params, x)`` function: measured here, that
dispatches about 3x faster than ``nnx.jit`` with the module as an argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

# one output array, or a tuple of them (e.g. HAR: probabilities and embeddings)
Forward = Callable[[Any, jax.Array], Any]


class StepForwards(NamedTuple):
    """A forward computed incrementally over an id's consecutive, overlapping inputs.

    ``full(params, x)`` returns the forward's outputs and then, last, the state the id's
    next input reuses (``state_shape`` per item); ``step(params, x, state)`` returns the
    same from an input and its predecessor's state, equal to ``full(params, x)`` to within
    float32 rounding when ``x`` continues the input that state came from.
    """

    full: Callable[[Any, jax.Array], tuple[jax.Array, ...]]
    step: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, ...]]
    state_shape: tuple[int, ...]


# a model's incremental forwards for consecutive inputs ``hop`` items apart, None without
StepFactory = Callable[[int], "StepForwards | None"]


class InputError(ValueError):
    """Input to a model has the wrong shape, dtype or non-finite values."""


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


MAX_PAD_FRACTION = 0.125


def call_plan(n: int, buckets: Sequence[int]) -> list[tuple[int, int]]:
    """How to run ``n`` items: ``(items, bucket)`` per call, in order.

    Each call pads up to the next bucket when that wastes at most ``MAX_PAD_FRACTION``
    of it, and otherwise runs the largest bucket it can fill and plans the rest the same
    way: 9 items run as 8 + 1, not as 16, 7 as one padded 8. On the HAR CNN a padded
    row costs about 0.2 ms of CPU and a call about 0.1 ms; replaying the batch sizes the
    service formed at 2,000 devices, this plan took 13% less CPU than padding every call
    (an eighth: 3.95 s, a quarter: 4.1 s, always padding: 4.6 s).
    """
    plan = []
    while n > 0:
        bucket = next((b for b in buckets if b >= n), buckets[-1])
        items = min(n, bucket)
        if bucket - items > bucket * MAX_PAD_FRACTION:
            bucket = items = max(b for b in buckets if b <= n)
        plan.append((items, bucket))
        n -= items
    return plan


class Predictor:
    """Owns parameters and a compiled forward pass; ``predict`` maps a batch to outputs.

    ``item_shape`` is the shape of one input (e.g. ``(80, 3)``); ``alt_item_shapes`` are
    other shapes accepted and reshaped to it (e.g. the flat ``(240,)`` vector phones send).
    ``item_kind`` is ``"f"`` for real-valued inputs or ``"i"`` for integer token ids.
    """

    def __init__(
        self,
        forward: Forward,
        params: Any,
        *,
        item_shape: Sequence[int],
        name: str,
        version: str,
        labels: Sequence[str] | None = None,
        item_kind: str = "f",
        alt_item_shapes: Sequence[Sequence[int]] = (),
        max_batch: int = 256,
        meta: dict[str, Any] | None = None,
        steps: StepFactory | None = None,
    ) -> None:
        if item_kind not in ("f", "i"):
            raise ValueError("item_kind must be 'f' or 'i'")
        self.name = name
        self.version = version
        self.labels = list(labels) if labels is not None else None
        self.meta = dict(meta or {})
        self.item_shape = tuple(item_shape)
        self.alt_item_shapes = [tuple(s) for s in alt_item_shapes]
        self.item_kind = item_kind
        self.dtype = np.float32 if item_kind == "f" else np.int32
        self.buckets = bucket_sizes(max_batch)
        self.max_batch = max_batch
        self.params = jax.device_put(params)
        self._forward = jax.jit(forward)
        self.compile_seconds: dict[int, float] = {}
        self._steps = steps
        self._steppers: dict[int, Stepper | None] = {}
        self._compile_all()

    @property
    def tag(self) -> str:
        """``name@version``, as published in every prediction."""
        return f"{self.name}@{self.version}"

    def _compile_all(self) -> None:
        """Compile (and run once) every bucket so that no request pays compile time."""
        for b in self.buckets:
            start = time.perf_counter()
            x = np.zeros((b, *self.item_shape), self.dtype)
            jax.block_until_ready(self._forward(self.params, x))
            self.compile_seconds[b] = time.perf_counter() - start

    def stepper(self, hop: int) -> Stepper | None:
        """The incremental programs for inputs ``hop`` items apart, compiled for every
        bucket on first use and kept; None when the model has none for that hop."""
        if hop not in self._steppers:
            forwards = None if self._steps is None else self._steps(hop)
            self._steppers[hop] = None if forwards is None else Stepper(self, forwards, hop)
        return self._steppers[hop]

    def validate(self, x: Any) -> np.ndarray:
        """Return ``x`` as an ``(n, *item_shape)`` array of the model dtype, or raise InputError."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise InputError(
                f"{self.name}: input dtype {arr.dtype} is not numeric; "
                f"expected {'real numbers' if self.item_kind == 'f' else 'integer token ids'}"
            )
        if self.item_kind == "i" and arr.dtype.kind == "f":
            raise InputError(f"{self.name}: token ids must be integers, got dtype {arr.dtype}")
        shapes = [self.item_shape, *self.alt_item_shapes]
        for shape in shapes:
            if arr.shape == shape:
                arr = arr[None]
                break
            if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
                break
        else:
            accepted = " or ".join(f"(n, {', '.join(map(str, s))})" for s in shapes)
            raise InputError(f"{self.name}: input shape {arr.shape} is wrong; expected {accepted}")
        if arr.shape[0] == 0:
            raise InputError(f"{self.name}: empty batch")
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
                raise InputError(
                    f"{self.name}: input has {int(bad.sum())} NaN/inf value(s) (batch rows {rows})"
                )
        return arr.reshape(arr.shape[0], *self.item_shape).astype(self.dtype, copy=False)

    def predict(self, x: Any) -> np.ndarray:
        """Outputs for a batch of any size (chunked by ``max_batch``, padded to a bucket)."""
        arr = self.validate(x)
        return self.predict_valid(arr)

    def predict_valid(self, arr: np.ndarray) -> np.ndarray:
        """``predict`` without validation, for callers that validated already: the first
        output of a forward that returns several."""
        return self.predict_outputs(arr)[0]

    def predict_outputs(self, arr: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output of the forward for a validated batch, as a tuple (one element for a
        forward with a single output): what the service's one batched call yields."""
        return self.run_planned(self._forward, arr)

    def run_planned(self, fn: Callable[..., Any], *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """``fn(params, *arrays)`` over batches of any size, by :func:`call_plan`: every
        array is cut and zero-padded alike, so each call has a compiled bucket size."""
        outs: list[list[np.ndarray]] = []
        start = 0
        for n, b in call_plan(arrays[0].shape[0], self.buckets):
            chunks = [a[start : start + n] for a in arrays]
            start += n
            if b != n:
                chunks = [
                    np.concatenate([c, np.zeros((b - n, *c.shape[1:]), c.dtype)]) for c in chunks
                ]
            out = fn(self.params, *chunks)
            parts = out if isinstance(out, tuple) else (out,)
            outs.append([np.asarray(p)[:n] for p in parts])
        if len(outs) == 1:
            return tuple(outs[0])
        return tuple(np.concatenate(column) for column in zip(*outs, strict=True))


class Stepper:
    """A predictor's :class:`StepForwards` for one hop, jit-compiled for every bucket.

    ``full(x)`` and ``step(x, states)`` return the predictor's outputs for a validated
    batch and, last, each item's new state (``state_shape``, float32): what the id's next
    input, if it continues this one, passes to ``step``.
    """

    def __init__(self, predictor: Predictor, forwards: StepForwards, hop: int) -> None:
        self.predictor = predictor
        self.hop = hop
        self.state_shape = tuple(forwards.state_shape)
        self.state_bytes = int(np.prod(self.state_shape)) * 4
        self._full = jax.jit(forwards.full)
        self._step = jax.jit(forwards.step)
        self.compile_seconds: dict[int, float] = {}
        for b in predictor.buckets:
            start = time.perf_counter()
            x = np.zeros((b, *predictor.item_shape), predictor.dtype)
            jax.block_until_ready(self._full(predictor.params, x))
            jax.block_until_ready(self._step(predictor.params, x, self.zero_states(b)))
            self.compile_seconds[b] = time.perf_counter() - start

    def zero_states(self, n: int) -> np.ndarray:
        """``n`` states of zeros (a batch to fill)."""
        return np.zeros((n, *self.state_shape), np.float32)

    def full(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.predictor.run_planned(self._full, x)

    def step(self, x: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.predictor.run_planned(self._step, x, states)
