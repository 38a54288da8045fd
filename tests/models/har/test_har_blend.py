"""The blended HAR model: JAX window features and trees equal to numpy and scikit-learn,
its checkpoint's round trip and validation, and the predictor serving it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from harstream.models.checkpoint import CheckpointError
from harstream.models.har import baseline, blend, checkpoint

WISDM = "wisdm2019-watch-accel-6"


def generated_windows(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows of 3 classes that differ in gravity axis and rhythm, in m/s^2."""
    rng = np.random.default_rng(seed)
    t = np.arange(80) / 20.0
    y = np.arange(n) % 3
    x = rng.normal(0.0, 1.0, (n, 80, 3))
    x[np.arange(n), :, y] += 9.8
    x[:, :, 0] += 3 * np.sin(2 * np.pi * (1 + y[:, None]) * t)
    return x.astype(np.float32), y


def real_windows(shared_data: Path, subjects: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    from harstream.models.har.data import load_recordings
    from harstream.models.har.windows import make_windows

    recordings = []
    for s in subjects:
        recordings += load_recordings(shared_data / WISDM / f"data_{s}_accel_watch.txt").recordings
    windows = make_windows(recordings)
    return windows.x, windows.labels


def assert_same_features(x: np.ndarray) -> None:
    want = baseline.window_features(x)
    got = blend.features_numpy(x)
    assert got.shape == want.shape == (len(x), blend.NUM_FEATURES)
    # float32 against float64 arithmetic: relative differences of a few 1e-6, more where
    # a feature (a correlation, a band share) is a difference of nearly equal numbers
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert np.mean(np.isclose(got, want, rtol=1e-5, atol=1e-5)) > 0.99


def test_jax_features_equal_the_numpy_features():
    assert_same_features(generated_windows()[0])


def test_jax_features_equal_the_numpy_features_on_real_windows(shared_data):
    assert_same_features(real_windows(shared_data, (1600,))[0])


def fitted_trees(x: np.ndarray, y: np.ndarray, iters: int = 20):
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=iters, max_leaf_nodes=15, random_state=0)
    return model.fit(blend.features_numpy(x), y)


def assert_trees_match(model, x: np.ndarray, n_classes: int) -> None:
    import jax

    arrays, shape = blend.export_trees(model, n_classes)
    assert shape["trees"] == model.n_iter_ * n_classes
    feats = blend.features_numpy(x)
    got = np.asarray(
        jax.jit(lambda b, f: blend.boost_probabilities(b, f, shape["depth"]))(arrays, feats)
    )
    want = model.predict_proba(feats)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_jax_trees_equal_scikit_learn():
    x, y = generated_windows()
    assert_trees_match(fitted_trees(x, y), generated_windows(seed=1)[0], 3)


def test_jax_trees_equal_scikit_learn_on_real_windows(shared_data):
    x, labels = real_windows(shared_data, (1600, 1601))
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    model = fitted_trees(x, y, iters=30)
    assert_trees_match(model, real_windows(shared_data, (1602,))[0], len(classes))


def test_trees_fitted_on_names_are_refused():
    x, y = generated_windows()
    model = fitted_trees(x, np.array(["a", "b", "c"])[y], iters=2)
    with pytest.raises(ValueError, match="class indices"):
        blend.export_trees(model, 3)


def test_blend_checkpoint_round_trip(har_blend_path, har_model_path, har_blend_predictor):
    import jax

    from harstream.families import load_predictor

    model, params, meta = checkpoint.load(har_blend_path)
    assert isinstance(model, blend.HarBlend) and model.cnn_weight == 0.6
    assert meta["arch"] == blend.ARCH and meta["name"] == "har-blend"
    x = np.random.default_rng(2).normal(0, 4, (7, 80, 3)).astype(np.float32)
    probs, emb = har_blend_predictor.predict_outputs(x)
    # the CNN's own embedding, and 0.6 x the CNN's probabilities + 0.4 x the trees'
    cnn = load_predictor(har_model_path, family="har", max_batch=8)
    cnn_probs, cnn_emb = cnn.predict_outputs(x)
    np.testing.assert_allclose(emb, cnn_emb, atol=1e-5)
    trees = np.asarray(
        blend.boost_probabilities(params["boost"], blend.window_features(x), model.depth)
    )
    np.testing.assert_allclose(probs, 0.6 * cnn_probs + 0.4 * trees, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the same numbers through a fresh jit of the loaded checkpoint
    again = jax.jit(checkpoint.embed_forward(model, meta))(params, x)[0]
    np.testing.assert_allclose(np.asarray(again), probs, atol=1e-5)


def broken_copy(src: Path, dst: Path, *, config=None, arrays=None) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        meta = json.loads((dst / "meta.json").read_text())
        meta["arch_config"] = config(meta["arch_config"])
        (dst / "meta.json").write_text(json.dumps(meta))
    if arrays is not None:
        params = str(dst / "params.safetensors")
        save_file(arrays(load_file(params)), params)
    return dst


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": lambda c: {**c, "nodes": c["nodes"] + 1}}, "boost/"),
        ({"config": lambda c: {**c, "cnn_weight": 1.5}}, "cnn_weight"),
        ({"config": lambda c: {**c, "colour": "blue"}}, "colour"),
        ({"config": lambda c: {**c, "num_classes": 5}}, "for 5 classes"),
        ({"arrays": lambda a: {k: v for k, v in a.items() if k != "boost/value"}}, "missing"),
        ({"arrays": lambda a: {**a, "boost/left": a["boost/left"].astype(np.int32)}}, "int32"),
    ],
)
def test_a_damaged_blend_checkpoint_is_refused(har_blend_path, tmp_path, change, message):
    bad = broken_copy(har_blend_path, tmp_path / "bad", **change)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(bad)


def test_shipped_models_are_selectable_by_name():
    from harstream.families import FAMILIES, resolve_checkpoint
    from harstream.models import WEIGHTS_DIR

    assert resolve_checkpoint("har-cnn") == WEIGHTS_DIR / "har-cnn"
    assert resolve_checkpoint("no-such-model") == Path("no-such-model")
    (har,) = [f for f in FAMILIES if f.name == "har"]
    assert resolve_checkpoint(har.shipped) == WEIGHTS_DIR / har.shipped


@pytest.mark.parametrize("hop", [20, 40])
def test_the_blend_steps_its_cnn_and_equals_itself_in_full(har_blend_predictor, hop):
    """Served incrementally, the blend's CNN part reuses the previous window's state and
    its trees take the whole window: the same outputs as in full."""
    stepper = har_blend_predictor.stepper(hop)
    assert stepper is not None and stepper.state_shape == (62 - hop, 100)
    rng = np.random.default_rng(hop)
    stream = rng.normal(0.0, 4.0, (3, 80 + 4 * hop, 3)).astype(np.float32)
    windows = [stream[:, k * hop : k * hop + 80] for k in range(5)]
    probs, _, state = stepper.full(windows[0])
    np.testing.assert_allclose(probs, har_blend_predictor.predict(windows[0]), atol=1e-5)
    for x in windows[1:]:
        probs, emb, state = stepper.step(x, state)
        ref_probs, ref_emb = har_blend_predictor.predict_outputs(x)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
        np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-4 * np.abs(ref_emb).max())
    assert har_blend_predictor.stepper(80) is None
