"""Sequence family: architectures, normalization, the lag experiment, data, checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from harstream.families import default_checkpoint
from harstream.models import checkpoint
from harstream.models.har.network import count_params
from harstream.models.series import checkpoint as series_checkpoint
from harstream.models.series import data, experiment, network


def _shapes(model):
    return jax.eval_shape(lambda: network.init_params(model))


def test_parameter_counts_match_the_article_layers():
    # LSTM(8) on 1 input: 4 gates x (8 x 1 + 8 x 8 + 8); Dense(2): 8 x 2 + 2; Dense(1): 3
    assert count_params(_shapes(network.SeriesLSTM(window=5))) == 4 * (8 + 64 + 8) + 18 + 3
    # Dense(8) on one value: 16; Dense(2): 18; Dense(1): 3
    assert count_params(_shapes(network.SeriesMLP(window=1))) == 16 + 18 + 3
    assert count_params(_shapes(network.SeriesMLP(window=21))) == 21 * 8 + 8 + 18 + 3
    model = network.SeriesLSTM(window=7)
    x = jax.ShapeDtypeStruct((4, 7), np.float32)
    forward = jax.jit(network.make_forward(model, {"mode": "window"}))
    assert jax.eval_shape(forward, _shapes(model), x).shape == (4,)


def test_window_normalization_makes_forecasts_level_and_scale_free():
    model = network.SeriesMLP(window=5)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.normal(0, 1, s.shape).astype(s.dtype), _shapes(model))
    forward = jax.jit(network.make_forward(model, {"mode": "window"}))
    x = np.array([[1.0, 2.0, 1.5, 3.0, 2.5], [0.0, 0.1, 0.0, 0.1, 0.0]], np.float32)
    base = np.asarray(forward(params, x))
    moved = np.asarray(forward(params, 1000.0 * x + 5e4))
    np.testing.assert_allclose(moved, 1000.0 * base + 5e4, rtol=1e-4)


def test_article_data_follows_its_formula():
    x, y = experiment.short_lag_data(10)
    assert np.isnan(y[:3]).all()
    assert y[3] == pytest.approx(3 + 0.5 * 2 + 0.2 * 1)
    assert y[9] == pytest.approx(1.8 * 9 - 1.2)
    x, y = experiment.long_lag_data(20, n=100, seed=1)
    assert y[50] == pytest.approx(x[50] + 0.5 * x[30])
    w, t = experiment.supervised(x, y, 21, 20)
    assert w.shape == (80, 21) and t[0] == pytest.approx(y[20])
    assert w[0, -1] == pytest.approx(x[20], rel=1e-6) and w[0, 0] == pytest.approx(x[0], rel=1e-6)


def test_short_lag_mlp_at_least_as_good_as_lstm():
    """The article's finding: one value determines y here, so the MLP needs no memory."""
    x, y = experiment.short_lag_data(300)
    mlp = experiment.run_case("short", x, y, "series-mlp", 1, 4, seed=0, epochs=40)
    lstm = experiment.run_case("short", x, y, "series-lstm", 5, 4, seed=0, epochs=40)
    assert mlp.relative_mse < 0.01  # it learned the relation, not the mean
    assert mlp.mse <= lstm.mse


def test_read_series_from_lines_and_csv(tmp_path):
    plain = tmp_path / "values.txt"
    plain.write_text("1.5\n2\n-3e2\n")
    np.testing.assert_array_equal(data.read_series(plain), [1.5, 2.0, -300.0])
    table = tmp_path / "values.csv"
    table.write_text("t,Value\n0,1\n1,2\n")
    np.testing.assert_array_equal(data.read_series(table), [1.0, 2.0])
    table.write_text("t,Value\n0,1\n1,oops\n")
    with pytest.raises(ValueError, match="row 2"):
        data.read_series(table)
    table.write_text("t,reading\n0,1\n")
    with pytest.raises(ValueError, match="no column"):
        data.read_series(table)


def test_next_value_pairs():
    x, y = data.next_value_pairs([np.arange(6.0), np.arange(2.0)], 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(y, [3, 4, 5])


def test_shipped_forecaster_beats_the_naive_forecast_on_a_new_stream():
    predictor = series_checkpoint.predictor_from_checkpoint(
        default_checkpoint("series"), max_batch=2
    )
    (k,) = predictor.item_shape
    t = np.arange(300.0)
    stream = 40.0 + 12.0 * np.sin(2 * np.pi * t / 37.0)
    x, y = data.next_value_pairs([stream], k)
    forecast = np.concatenate([predictor.predict(x[i : i + 2]) for i in range(0, len(x), 2)])
    assert np.mean((forecast - y) ** 2) < 0.5 * np.mean((x[:, -1] - y) ** 2)


def test_checkpoint_round_trip_and_bad_normalization(tmp_path):
    model = network.SeriesMLP(window=1)
    params = network.init_params(model)
    norm = {"mode": "global", "x_mean": 1.0, "x_std": 2.0, "y_mean": 0.0, "y_std": 1.0}
    meta = {"name": "tiny", "version": "0", "normalization": norm}
    series_checkpoint.save(tmp_path / "ok", "series-mlp", {"window": 1}, params, meta)
    _, loaded, got = series_checkpoint.load(tmp_path / "ok")
    assert got["window"] == 1 and got["horizon"] == 1
    np.testing.assert_array_equal(loaded["out"]["kernel"], params["out"]["kernel"])
    meta["normalization"] = {"mode": "global", "x_mean": 1.0}
    series_checkpoint.save(tmp_path / "bad", "series-mlp", {"window": 1}, params, meta)
    with pytest.raises(checkpoint.CheckpointError, match="normalization"):
        series_checkpoint.load(tmp_path / "bad")
