"""Recipes as data: the shipped models' training settings are TOML files, and a plain
``harstream train har`` trains with exactly the shipped model's recipe."""

from __future__ import annotations

import json

import pytest

from harstream.families import default_checkpoint
from harstream.models.har.recipes import RECIPE_KEYS, load_recipe
from harstream.models.har.training import HarTrainConfig


@pytest.mark.parametrize(("recipe", "shipped"), [("cnn", "har-cnn"), ("lstm", "har-lstm")])
def test_each_recipe_is_what_its_shipped_model_was_trained_with(recipe, shipped):
    weights = default_checkpoint("har").parent / shipped
    trained = json.loads((weights / "meta.json").read_text())["training"]["config"]
    settings = load_recipe(recipe)
    assert set(settings) <= set(RECIPE_KEYS)
    assert settings == {k: trained[k] for k in settings}


def test_the_defaults_are_the_shipped_recipe():
    config = HarTrainConfig(data="recordings")
    assert {k: getattr(config, k) for k in load_recipe("cnn")} == load_recipe("cnn")
    lstm = HarTrainConfig.from_recipe("lstm", data="recordings", epochs=2)
    assert (lstm.model, lstm.epochs, lstm.batch_size) == ("lstm", 2, 100)


def test_a_recipe_of_your_own_and_its_mistakes(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('model = "lstm"\nepochs = 5\n')
    assert HarTrainConfig.from_recipe(mine, data="d").epochs == 5
    mine.write_text("epoch = 5\n")
    with pytest.raises(ValueError, match="unknown keys \\['epoch'\\]"):
        load_recipe(mine)
    with pytest.raises(ValueError, match="shipped recipes: cnn, lstm"):
        load_recipe("resnet")


def test_train_help_names_the_recipe_and_its_values(capsys):
    from harstream.cli import main

    with pytest.raises(SystemExit):
        main(["train", "har", "--help"])
    out = capsys.readouterr().out
    assert "--recipe NAME|FILE" in out and "(recipe: 100)" in out and "(recipe: 0.998)" in out
