"""The blended HAR model: the CNN and window features + gradient boosting in one jit call.

The CNN and the feature model (:mod:`harstream.models.har.baseline`) make different
mistakes, so a weighted average of their class probabilities beats either alone (the
weight is chosen on out-of-fold probabilities of a subject-grouped cross-validation,
docs/results/har.md). The service runs a model as one compiled ``(params, x)`` function,
so both halves are JAX here: :func:`window_features` is the baseline's feature vector in
``jax.numpy``, and the fitted ``HistGradientBoostingClassifier`` is exported as arrays
(split feature, threshold, children and leaf value per node of every tree,
:func:`export_trees`) that :func:`boost_probabilities` walks for all trees at once. The
checkpoint holds only arrays (safetensors) and JSON, no pickled scikit-learn object.

The forward returns the blend's probabilities and the CNN's embedding, like the CNN's,
so per-device calibration (prototypes on that embedding) works unchanged: the prototypes
are mixed into the blend's probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from harstream.models.har import network
from harstream.models.predictor import StepForwards

ARCH = "har-blend"
PERCENTILES = (10, 25, 50, 75, 90)
SPECTRAL_BANDS = 6
# mean, std, min, max, 5 percentiles, mean absolute deviation, jerk over x, y, z, |a|;
# 3 axis correlations; 6 band energies, total energy and peak bin of the 4 signals
NUM_FEATURES = 4 * (4 + len(PERCENTILES) + 2) + 3 + 4 * (SPECTRAL_BANDS + 2)
# the boosted trees of the baseline (models/har/baseline.py) use float64 features; this
# module's are float32, equal to them within float32 rounding (tests/test_har_blend.py)


def _bands(window: int) -> list[np.ndarray]:
    """The spectral bands of :func:`window_features`: bins 1 .. window/2 in equal runs."""
    return np.array_split(np.arange(1, window // 2 + 1), SPECTRAL_BANDS)


def window_features(x: jax.Array) -> jax.Array:
    """``(n, window, 3)`` windows -> ``(n, NUM_FEATURES)`` float32 features, the same
    ones as :func:`harstream.models.har.baseline.window_features` (which runs in numpy,
    float64), in JAX so that they compile into the model's forward."""
    x = jnp.asarray(x, jnp.float32)
    mag = jnp.sqrt(jnp.sum(x * x, axis=2, keepdims=True))
    sig = jnp.concatenate([x, mag], axis=2)
    centred = sig - sig.mean(axis=1, keepdims=True)
    std = jnp.sqrt(jnp.mean(centred * centred, axis=1))
    feats = [
        sig.mean(axis=1),
        std,
        sig.min(axis=1),
        sig.max(axis=1),
        *jnp.percentile(sig, jnp.asarray(PERCENTILES, jnp.float32), axis=1),
        jnp.abs(centred).mean(axis=1),
        jnp.abs(jnp.diff(sig, axis=1)).mean(axis=1),
    ]
    std = std + 1e-9
    for i, j in ((0, 1), (0, 2), (1, 2)):
        corr = (centred[:, :, i] * centred[:, :, j]).mean(axis=1) / (std[:, i] * std[:, j])
        feats.append(corr[:, None])
    spectrum = jnp.abs(jnp.fft.rfft(centred, axis=1)) ** 2
    total = spectrum[:, 1:].sum(axis=1) + 1e-9
    for band in _bands(x.shape[1]):
        feats.append(spectrum[:, band[0] : band[-1] + 1].sum(axis=1) / total)
    feats.append(jnp.log1p(total))
    feats.append(jnp.argmax(spectrum[:, 1:], axis=1).astype(jnp.float32))
    return jnp.concatenate(feats, axis=1)


def features_numpy(x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """:func:`window_features` of many windows, compiled once, as a numpy array (what the
    blend's boosted trees are fitted on, so training and serving see the same numbers)."""
    fn = jax.jit(window_features)
    x = np.asarray(x, np.float32)
    return np.concatenate(
        [np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)]
        or [np.zeros((0, NUM_FEATURES), np.float32)]
    )


@dataclass(frozen=True)
class HarBlend:
    """Settings of a blend (its checkpoint's ``arch_config``): the CNN's architecture and
    settings, the weight of the CNN's probabilities (the boosting's get ``1 - weight``)
    and the shape of the exported trees (``trees`` trees of ``nodes`` node slots each,
    walked ``depth`` steps; tree ``t`` adds to class ``t % num_classes``)."""

    num_classes: int
    cnn_weight: float
    trees: int
    nodes: int
    depth: int
    features: int = NUM_FEATURES
    cnn: str = "har-cnn"

    def __post_init__(self) -> None:
        if not 0.0 <= self.cnn_weight <= 1.0:
            raise ValueError(f"cnn_weight must be in [0, 1], got {self.cnn_weight}")
        if self.features != NUM_FEATURES:
            raise ValueError(f"a blend uses {NUM_FEATURES} window features, not {self.features}")
        if self.trees < 1 or self.trees % self.num_classes or self.nodes < 1 or self.depth < 0:
            raise ValueError(
                f"bad tree shape: {self.trees} trees for {self.num_classes} classes, "
                f"{self.nodes} nodes, depth {self.depth}"
            )
        if self.cnn not in network.ARCHITECTURES:
            raise ValueError(f"unknown CNN architecture {self.cnn!r}")

    def cnn_module(self) -> Any:
        return network.build(self.cnn, {"num_classes": self.num_classes})

    def expected_params(self) -> dict[str, Any]:
        """Shapes and dtypes of the checkpoint's arrays, for checking a loaded one."""
        shape, per_node = (self.trees, self.nodes), jax.ShapeDtypeStruct
        return {
            "cnn": jax.eval_shape(lambda: network.init_params(self.cnn_module())),
            "boost": {
                "feature": per_node(shape, jnp.int16),
                "threshold": per_node(shape, jnp.float32),
                "left": per_node(shape, jnp.int16),
                "right": per_node(shape, jnp.int16),
                "value": per_node(shape, jnp.float32),
                "baseline": per_node((self.num_classes,), jnp.float32),
            },
        }


def build(config: dict[str, Any]) -> HarBlend:
    """A :class:`HarBlend` from its checkpoint's ``arch_config``."""
    return HarBlend(**config)


def export_trees(model: Any, num_classes: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The trees of a fitted ``HistGradientBoostingClassifier`` (fitted on class indices
    ``0 .. num_classes - 1`` and numeric features, without missing values) as arrays, and
    the ``trees``/``nodes``/``depth`` of :class:`HarBlend`.

    Leaves point to themselves, so walking ``depth`` steps from the root ends on every
    tree's leaf. Thresholds are rounded down to float32: for a float32 feature ``v``,
    ``v <= t`` (scikit-learn's test, in float64) holds exactly when ``v <= t32``.
    """
    if list(model.classes_) != list(range(num_classes)):
        raise ValueError(f"the trees must be fitted on class indices 0..{num_classes - 1}")
    if model.n_trees_per_iteration_ != num_classes:
        raise ValueError("a multi-class model has one tree per class and iteration")
    trees = [tree for iteration in model._predictors for tree in iteration]
    if any(tree.nodes["is_categorical"].any() for tree in trees):
        raise ValueError("categorical splits are not supported")
    n = max(len(tree.nodes) for tree in trees)
    shape = (len(trees), n)
    out = {
        "feature": np.zeros(shape, np.int16),
        "threshold": np.zeros(shape, np.float32),
        "left": np.tile(np.arange(n, dtype=np.int16), (len(trees), 1)),
        "right": np.tile(np.arange(n, dtype=np.int16), (len(trees), 1)),
        "value": np.zeros(shape, np.float32),
    }
    for t, tree in enumerate(trees):
        nodes = tree.nodes
        split = nodes["is_leaf"] == 0
        k = len(nodes)
        out["feature"][t, :k] = np.where(split, nodes["feature_idx"], 0)
        thr = nodes["num_threshold"]
        thr32 = thr.astype(np.float32)
        thr32 = np.where(thr32 > thr, np.nextafter(thr32, np.float32(-np.inf)), thr32)
        out["threshold"][t, :k] = np.where(split, thr32, 0.0)
        out["left"][t, :k] = np.where(split, nodes["left"], np.arange(k))
        out["right"][t, :k] = np.where(split, nodes["right"], np.arange(k))
        out["value"][t, :k] = np.where(split, 0.0, nodes["value"])
    out["baseline"] = np.asarray(model._baseline_prediction, np.float32).reshape(num_classes)
    depth = max(tree.get_max_depth() for tree in trees)
    return out, {"trees": len(trees), "nodes": n, "depth": int(depth)}


def boost_probabilities(boost: dict[str, jax.Array], feats: jax.Array, depth: int) -> jax.Array:
    """``(n, C)`` class probabilities of the exported trees for ``(n, F)`` features:
    ``depth`` steps down every tree at once, leaf values summed per class, softmax."""
    boost = {k: jnp.asarray(v) for k, v in boost.items()}
    n_classes = boost["baseline"].shape[0]
    trees = jnp.arange(boost["feature"].shape[0])[None, :]
    feature = boost["feature"].astype(jnp.int32)
    left, right = boost["left"].astype(jnp.int32), boost["right"].astype(jnp.int32)

    def step(_: int, node: jax.Array) -> jax.Array:
        value = jnp.take_along_axis(feats, feature[trees, node], axis=1)
        go_left = value <= boost["threshold"][trees, node]
        return jnp.where(go_left, left[trees, node], right[trees, node])

    node = jax.lax.fori_loop(0, depth, step, jnp.zeros((feats.shape[0], trees.shape[1]), jnp.int32))
    raw = boost["value"][trees, node].reshape(feats.shape[0], -1, n_classes).sum(axis=1)
    return jax.nn.softmax(raw + boost["baseline"], axis=-1)


def make_forward(blend: HarBlend, mean: np.ndarray, std: np.ndarray):
    """Pure ``(params, x) -> (blend probabilities, CNN embedding)``, like
    :func:`network.make_embed_forward` of the CNN alone."""
    cnn = network.make_embed_forward(blend.cnn_module(), mean, std)
    weight = blend.cnn_weight

    def forward(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        probs, emb = cnn(params["cnn"], x)
        boosted = boost_probabilities(params["boost"], window_features(x), blend.depth)
        return weight * probs + (1.0 - weight) * boosted, emb

    return forward


def make_step_forwards(
    blend: HarBlend, mean: np.ndarray, std: np.ndarray, hop: int
) -> StepForwards | None:
    """:func:`make_forward` computed incrementally over a device's consecutive windows
    ``hop`` samples apart: the CNN part steps (:func:`network.make_step_forwards`, same
    state), the features and trees take each window whole (they reuse nothing). None
    where the CNN does not step."""
    cnn = network.make_step_forwards(blend.cnn_module(), mean, std, hop)
    if cnn is None:
        return None
    weight = blend.cnn_weight

    def mixed(params: Any, x: jax.Array, outputs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        probs, emb, state = outputs
        boosted = boost_probabilities(params["boost"], window_features(x), blend.depth)
        return weight * probs + (1.0 - weight) * boosted, emb, state

    def full(params: Any, x: jax.Array) -> tuple[jax.Array, ...]:
        return mixed(params, x, cnn.full(params["cnn"], x))

    def step(params: Any, x: jax.Array, state: jax.Array) -> tuple[jax.Array, ...]:
        return mixed(params, x, cnn.step(params["cnn"], x, state))

    return StepForwards(full, step, cnn.state_shape)


def make_parts_forward(blend: HarBlend, mean: np.ndarray, std: np.ndarray):
    """Pure ``(params, x) -> (CNN probabilities, CNN embedding, boosting probabilities)``:
    the halves of :func:`make_forward` before they are averaged (for choosing the weight)."""
    cnn = network.make_embed_forward(blend.cnn_module(), mean, std)

    def forward(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        probs, emb = cnn(params["cnn"], x)
        return probs, emb, boost_probabilities(params["boost"], window_features(x), blend.depth)

    return forward


def blend_config(
    num_classes: int, cnn_weight: float, shape: dict[str, int], cnn: str = "har-cnn"
) -> dict[str, Any]:
    """The ``arch_config`` of a blend (validated by building it)."""
    return asdict(HarBlend(num_classes=num_classes, cnn_weight=cnn_weight, cnn=cnn, **shape))
