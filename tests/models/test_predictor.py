"""The HAR architectures and the bucketed jit Predictor."""

from __future__ import annotations

import numpy as np
import pytest

from harstream.families import load_predictor
from harstream.models import checkpoint
from harstream.models.har import checkpoint as har_checkpoint
from harstream.models.har import network
from harstream.models.predictor import InputError, bucket_sizes, call_plan


@pytest.fixture(scope="session")
def random_har_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    model = network.HarCNN()
    path = tmp_path_factory.mktemp("ckpt") / "har-cnn"
    har_checkpoint.save(
        path,
        "har-cnn",
        {"num_classes": 6},
        network.init_params(model, seed=1),
        {
            "classes": ["walking", "jogging", "stairs", "sitting", "standing", "kicking"],
            "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "name": "har-cnn",
            "version": "test",
        },
    )
    return path


@pytest.fixture(scope="session")
def small_predictor(random_har_checkpoint):
    return load_predictor(random_har_checkpoint, max_batch=8)


def test_cnn_has_the_articles_parameter_count():
    assert network.count_params(network.init_params(network.HarCNN(num_classes=6))) == 520_486


def test_lstm_builds_and_outputs_logits():
    model = network.HarLSTM(num_classes=6)
    params = network.init_params(model)
    out = model.apply({"params": params}, np.zeros((2, 80, 3), np.float32))
    assert out.shape == (2, 6)


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.mark.parametrize(
    ("n", "plan"),
    [
        (1, [(1, 1)]),
        (3, [(2, 2), (1, 1)]),  # one padded row of four would be a quarter
        (7, [(7, 8)]),  # one padded row of eight: an eighth
        (9, [(8, 8), (1, 1)]),
        (15, [(15, 16)]),
        (60, [(60, 64)]),
        (70, [(64, 64), (4, 4), (2, 2)]),
        (100, [(100, 100)]),
        (230, [(100, 100), (100, 100), (30, 32)]),
    ],
)
def test_call_plan_pads_a_little_or_splits(n, plan):
    buckets = bucket_sizes(100)
    assert call_plan(n, buckets) == plan
    assert sum(items for items, _ in plan) == n


def test_predict_pads_and_chunks_consistently(small_predictor):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(21, 80, 3)).astype(np.float32)
    together = small_predictor.predict(x)
    one_by_one = np.concatenate([small_predictor.predict(x[i]) for i in range(21)])
    assert together.shape == (21, 6)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-6)
    assert set(small_predictor.compile_seconds) == {1, 2, 4, 8}


def test_flat_vector_is_accepted(small_predictor):
    x = np.random.default_rng(1).normal(size=(3, 80, 3)).astype(np.float32)
    np.testing.assert_allclose(
        small_predictor.predict(x.reshape(3, 240)), small_predictor.predict(x), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 79, 3)), "shape"),
        (np.zeros((2, 80, 4)), "shape"),
        (np.array([["a"] * 3] * 80), "dtype"),
        (np.full((1, 80, 3), np.nan), "NaN"),
        (np.full((1, 80, 3), np.inf), "NaN/inf"),
        (np.zeros((0, 80, 3)), "empty"),
    ],
)
def test_bad_input_is_named(small_predictor, bad, message):
    with pytest.raises(InputError, match=message):
        small_predictor.predict(bad)


def test_checkpoint_round_trip(random_har_checkpoint, small_predictor):
    model, params, meta = har_checkpoint.load(random_har_checkpoint)
    assert meta["classes"][0] == "walking"
    assert meta["family"] == "har" and meta["format"] == checkpoint.FORMAT
    assert small_predictor.tag == "har-cnn@test"


def test_truncated_checkpoint_fails_clearly(random_har_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_bytes((random_har_checkpoint / "meta.json").read_bytes())
    data = (random_har_checkpoint / "params.safetensors").read_bytes()
    (broken / "params.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        har_checkpoint.load(broken)


def test_mismatched_architecture_fails_clearly(random_har_checkpoint, tmp_path):
    other = tmp_path / "lstm"
    lstm = network.HarLSTM()
    har_checkpoint.save(
        other,
        "har-lstm",
        {"num_classes": 6},
        network.init_params(lstm),
        {
            "classes": list("abcdef"),
            "normalization": {"mean": [0] * 3, "std": [1] * 3},
            "name": "x",
            "version": "1",
        },
    )
    meta = (other / "meta.json").read_text().replace('"har-lstm"', '"har-cnn"')
    (other / "meta.json").write_text(meta)
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        har_checkpoint.load(other)


def test_foreign_and_missing_files_fail_clearly(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load_meta(tmp_path / "nope")
    (tmp_path / "meta.json").write_text('{"hello": 1}')
    with pytest.raises(checkpoint.CheckpointError, match="not harstream"):
        checkpoint.load_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.load_meta(tmp_path)


def test_har_predictor_yields_probabilities_and_embeddings_in_one_call(small_predictor):
    """11 windows run as 8 + 2 + 1 bucket calls; each output is cut and joined in order,
    and the embedding is the input of the final Dense layer."""
    x = np.random.default_rng(5).normal(0.0, 4.0, (11, 80, 3)).astype(np.float32)
    probs, emb = small_predictor.predict_outputs(x)
    assert probs.shape == (11, 6) and emb.shape == (11, 160)
    np.testing.assert_allclose(small_predictor.predict(x), probs)
    dense = small_predictor.params["dense"]
    logits = emb @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probs, atol=1e-5)
    one_by_one = [small_predictor.predict_outputs(w[None])[1][0] for w in x]
    np.testing.assert_allclose(one_by_one, emb, rtol=1e-4, atol=1e-5)
