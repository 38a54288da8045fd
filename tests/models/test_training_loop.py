"""The shared training loop (``models.training``): fit, weight average, curves, arguments."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from harstream.models import training


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(3)(x)


def tiny_run(seed: int, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(192, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    model = Tiny()
    params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
    validate = training.classification_eval(
        lambda p, v: model.apply({"params": p}, v), x[:64], y[:64], batch_size=50
    )
    return training.fit(
        training.classifier_loss(model, label_smoothing=0.05),
        params,
        (x, y),
        optax.adam(1e-2),
        epochs=6,
        batch_size=32,
        seed=seed,
        validate=validate,
        monitor="val_accuracy",
        mode="max",
        progress=False,
        **kwargs,
    )


def test_fit_lowers_the_loss_and_is_deterministic(tmp_path):
    first, again = tiny_run(0), tiny_run(0)
    losses = [h["loss"] for h in first.history]
    assert losses[-1] < 0.7 * losses[0]
    assert first.best_value > 0.65
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in first.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in again.history]
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, first.params, again.params)
    )
    assert first.best_epoch == max(range(1, 7), key=lambda e: first.history[e - 1]["val_accuracy"])
    png = training.save_curves(first.history, tmp_path / "curves.png", best_epoch=2)
    assert png.stat().st_size > 1000


def test_fit_weight_average_and_last_epoch():
    plain, last, ema = tiny_run(0), tiny_run(0, restore_best=False), tiny_run(0, ema_decay=0.9)
    assert last.best_epoch == 6 and last.best_value == last.history[-1]["val_accuracy"]
    assert plain.history[0]["loss"] == ema.history[0]["loss"]  # same steps, other weights
    differ = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), plain.params, ema.params)
    assert any(jax.tree_util.tree_leaves(differ))
    assert ema.history[0]["val_accuracy"] != plain.history[0]["val_accuracy"]
    assert ema.best_value > 0.65
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_run(0, ema_decay=1.0)


def test_fit_rejects_bad_arguments():
    x, y = np.zeros((4, 2), np.float32), np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="differ in length"):
        training.fit(lambda p, b, r: (0.0, {}), {}, (x, y), optax.sgd(1), epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="mode"):
        training.fit(lambda p, b, r: (0.0, {}), {}, (x,), optax.sgd(1), epochs=1, batch_size=2,
                     mode="up")  # fmt: skip
