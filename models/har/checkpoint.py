"""Save and load HAR checkpoints, and build their Predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from harstream.models import checkpoint
from harstream.models.har import blend, network
from harstream.models.har.windows import AXES, RATE_HZ, WINDOW
from harstream.models.predictor import Predictor, StepForwards


def save(
    path: str | Path, arch: str, config: dict[str, Any], params: Any, meta: dict[str, Any]
) -> Path:
    """Write a HAR checkpoint; ``meta`` must hold ``classes`` and ``normalization``."""
    contract = {"input_shape": [WINDOW, AXES], "window": WINDOW, "rate_hz": RATE_HZ}
    required = ("classes", "normalization", "name", "version")
    full = checkpoint.family_meta("har", arch, config, {**contract, **meta}, required)
    return checkpoint.save(path, params, full)


def _build(arch: str, config: dict[str, Any]) -> Any:
    """A network module, or a :class:`blend.HarBlend` for a blend's checkpoint."""
    return blend.build(config) if arch == blend.ARCH else network.build(arch, config)


def load(path: str | Path) -> tuple[Any, dict[str, Any], Any]:
    """Return ``(module, params, meta)``, checking the weights against the architecture
    (for a blend, the module is its :class:`blend.HarBlend` settings)."""
    model, meta = checkpoint.build_from_meta(path, "har", _build)
    checkpoint.check_classes(path, meta, model.num_classes)
    if isinstance(model, blend.HarBlend):
        expected = model.expected_params()
    else:
        expected = jax.eval_shape(lambda: network.init_params(model))
    params, meta = checkpoint.load(path, expected)
    return model, params, meta


def embed_forward(model: Any, meta: dict[str, Any]) -> Any:
    """The pure ``(params, x) -> (probabilities, embedding)`` of a loaded checkpoint: the
    network's (:func:`network.make_embed_forward`) or the blend's (the CNN's embedding)."""
    mean, std = (np.asarray(meta["normalization"][k]) for k in ("mean", "std"))
    if isinstance(model, blend.HarBlend):
        return blend.make_forward(model, mean, std)
    return network.make_embed_forward(model, mean, std)


def step_forwards(model: Any, meta: dict[str, Any], hop: int) -> StepForwards | None:
    """The incremental forwards of :func:`embed_forward` at ``hop``, or None (the LSTM's)."""
    mean, std = (np.asarray(meta["normalization"][k]) for k in ("mean", "std"))
    if isinstance(model, blend.HarBlend):
        return blend.make_step_forwards(model, mean, std, hop)
    return network.make_step_forwards(model, mean, std, hop)


def predictor_from_checkpoint(path: Path, max_batch: int = 256) -> Predictor:
    """A compiled HAR predictor: (n, 80, 3) or (n, 240) m/s^2 in, class probabilities out
    (``predict``), with the embeddings too (``predict_outputs``: probabilities, then the
    input of the CNN's final Dense layer), from the same compiled call. ``stepper(hop)``
    gives the incremental programs of the CNN, alone or in a blend (:func:`step_forwards`)."""
    model, params, meta = load(path)
    return Predictor(
        embed_forward(model, meta),
        params,
        item_shape=(WINDOW, AXES),
        alt_item_shapes=[(WINDOW * AXES,)],
        name=meta["name"],
        version=meta["version"],
        labels=meta["classes"],
        max_batch=max_batch,
        meta=meta,
        steps=lambda hop: step_forwards(model, meta, hop),
    )
