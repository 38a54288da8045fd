"""A generic optax training loop shared by every model family (HAR, text, series).

API (stable; other families build on it):

- ``loss_fn(params, batch, rng) -> (loss, aux)``: a pure function; ``batch`` is a tuple of
  arrays sharing the leading dimension (e.g. ``(x, y)``), ``aux`` a dict of scalar metrics
  (e.g. ``{"accuracy": ...}``) shown in the progress bar and kept in the history.
  :func:`classifier_loss` builds one for any Linen classifier taking ``train=`` and
  using ``nn.Dropout`` (rng stream ``"dropout"``).
- :func:`fit` runs epochs of shuffled mini-batches through one ``jax.jit``-compiled
  step (``loss_fn`` + ``optimizer.update`` + ``optax.apply_updates``), calls
  ``validate(params) -> dict`` after each epoch, stops early when ``monitor`` has not
  improved for ``patience`` epochs and returns a :class:`FitResult` with the best params
  (``restore_best=False``: the last ones, for a fixed epoch count). ``ema_decay > 0`` keeps
  an exponential moving average of the weights (updated every step); it is what
  ``validate`` sees and what is returned, still one set of parameters of the same model.
  Runs are deterministic for a seed (shuffling, dropout and ``augment`` all derive from it).
- :func:`predict_batches` applies a jitted function over a big array in fixed-size
  batches (padding the last one, so it compiles once).
- :func:`classification_eval` turns a predict function into a ``validate`` callback giving
  ``val_loss`` and ``val_accuracy``.
- :func:`save_curves` draws the history (loss and every shared metric) to a PNG
  (:func:`curves_figure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Batch = tuple[np.ndarray, ...]
log = logging.getLogger(__name__)
LossFn = Callable[[Any, tuple[jax.Array, ...], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclass
class FitResult:
    """Best parameters (by ``monitor``), per-epoch history and timing."""

    params: Any
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def mean_epoch_seconds(self) -> float:
        """Mean wall time of a training epoch (validation excluded), first epoch excluded
        when there are more, since it includes compilation."""
        times = self.epoch_seconds[1:] or self.epoch_seconds
        return float(np.mean(times)) if times else 0.0

    def record(self) -> dict[str, Any]:
        """What a checkpoint's ``meta.json`` keeps of the run (its ``training`` section)."""
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "seconds_per_epoch": round(self.mean_epoch_seconds, 2),
            "history": self.history,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def classifier_loss(model: Any, label_smoothing: float = 0.0) -> LossFn:
    """Softmax cross-entropy (optionally label-smoothed) of a Linen classifier.

    ``batch = (x, y)`` with integer class ids ``y``; ``aux`` reports the batch accuracy.
    """

    def loss_fn(params, batch, rng):
        x, y = batch
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
        n = logits.shape[-1]
        targets = optax.smooth_labels(jax.nn.one_hot(y, n), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (jnp.argmax(logits, -1) == y).mean()
        return loss, {"accuracy": accuracy}

    return loss_fn


def predict_batches(
    fn: Callable[[Any, jax.Array], Any], params: Any, x: np.ndarray, batch_size: int = 512
) -> Any:
    """``fn(params, x)`` over ``x`` in batches of exactly ``batch_size`` (last one padded).

    ``fn`` should already be ``jax.jit``-compiled; fixed batch shapes keep it to one compile.
    It may return one array or a tuple of them (e.g. probabilities and embeddings); the
    result has the same structure, each array concatenated over the batches.
    """
    if len(x) == 0:
        raise ValueError("nothing to predict: x is empty")
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outs.append(jax.tree_util.tree_map(lambda a, n=n: np.asarray(a)[:n], fn(params, chunk)))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outs)


def classification_eval(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 512,
) -> Callable[[Any], dict[str, float]]:
    """A ``validate`` callback: ``val_loss`` (cross-entropy) and ``val_accuracy`` on (x, y)."""
    jitted = jax.jit(logits_fn)
    y = np.asarray(y)

    def validate(params: Any) -> dict[str, float]:
        logits = predict_batches(jitted, params, x, batch_size)
        loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), y).mean()
        return {
            "val_loss": float(loss),
            "val_accuracy": float((logits.argmax(-1) == y).mean()),
        }

    return validate


def fit(
    loss_fn: LossFn,
    params: Any,
    train: Batch,
    optimizer: optax.GradientTransformation,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    validate: Callable[[Any], dict[str, float]] | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    patience: int = 5,
    augment: Callable[[np.random.Generator, Batch], Batch] | None = None,
    progress: bool = True,
    desc: str = "train",
    ema_decay: float = 0.0,
    restore_best: bool = True,
) -> FitResult:
    """Train ``params`` on ``train`` with ``optimizer``; see the module docstring.

    ``augment(rng, batch) -> batch`` transforms each numpy batch before the step (e.g.
    random rotations). Without ``validate``, ``monitor`` must be a training key (e.g.
    ``"loss"``). The last incomplete batch of an epoch is dropped so the step compiles once;
    the shuffle differs each epoch, so every sample is still used.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    n = len(train[0])
    if any(len(a) != n for a in train):
        raise ValueError(f"training arrays differ in length: {[len(a) for a in train]}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    batch_size = min(batch_size, n)
    if batch_size < 1:
        raise ValueError("no training data")
    steps = n // batch_size

    @jax.jit
    def step(params, ema, opt_state, batch, rng):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema_decay:
            ema = jax.tree_util.tree_map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params
            )
        return params, ema, opt_state, loss, aux

    np_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    opt_state = optimizer.init(params)
    ema = params  # the averaged weights when ema_decay > 0 (else unused)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    best_value = np.inf if mode == "min" else -np.inf
    best_params, best_epoch, bad_epochs = params, 0, 0
    history: list[dict[str, float]] = []
    epoch_seconds: list[float] = []
    stopped_early = False
    for epoch in range(1, epochs + 1):
        order = np_rng.permutation(n)
        totals: dict[str, float] = {}
        start = time.perf_counter()
        bar = _progress(steps, f"{desc} {epoch}/{epochs}", progress)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            batch = tuple(a[idx] for a in train)
            if augment is not None:
                batch = augment(np_rng, batch)
            key, sub = jax.random.split(key)
            params, ema, opt_state, loss, aux = step(params, ema, opt_state, batch, sub)
            values = {"loss": float(loss), **{k: float(v) for k, v in aux.items()}}
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
            if bar is not None:
                bar.set_postfix({k: f"{v / (i + 1):.4f}" for k, v in totals.items()})
                bar.update()
        epoch_seconds.append(time.perf_counter() - start)
        record: dict[str, float] = {"epoch": epoch, **{k: v / steps for k, v in totals.items()}}
        current = ema if ema_decay else params
        if validate is not None:
            record.update(validate(current))
        record["seconds"] = epoch_seconds[-1]
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"})
            bar.close()
        history.append(record)
        log.info(
            "%s epoch %d/%d: %s",
            desc,
            epoch,
            epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"),
        )
        if monitor not in record:
            raise KeyError(f"monitor {monitor!r} not among the epoch metrics {sorted(record)}")
        value = record[monitor]
        if not restore_best:
            best_value, best_params, best_epoch = value, current, epoch
        elif better(value, best_value):
            best_value, best_params, best_epoch, bad_epochs = value, current, epoch, 0
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                stopped_early = epoch < epochs
                break
    return FitResult(
        params=best_params,
        history=history,
        best_epoch=best_epoch,
        best_value=float(best_value),
        epochs_run=len(history),
        stopped_early=stopped_early,
        epoch_seconds=epoch_seconds,
    )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def save_curves(
    history: Sequence[dict[str, float]], path: str | Path, title: str = "", best_epoch: int = 0
) -> Path:
    """Save :func:`curves_figure` as a PNG at ``path``."""
    from harstream.models.figures import save_figure

    return save_figure(curves_figure(history, title, best_epoch), path, dpi=100)


def curves_figure(history: Sequence[dict[str, float]], title: str = "", best_epoch: int = 0) -> Any:
    """Training and validation curves: loss, then each metric with a ``val_`` twin."""
    from harstream.models.figures import pyplot

    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    # a line through one point draws nothing: short runs get a marker on every epoch
    marker = "o" if len(epochs) < 20 else None
    keys = ["loss"] + sorted(k for k in history[0] if f"val_{k}" in history[0] and k != "loss")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], marker=marker, label=f"train {key}")
        if f"val_{key}" in history[0]:
            ax.plot(
                epochs,
                [h[f"val_{key}"] for h in history],
                marker=marker,
                label=f"validation {key}",
            )
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
