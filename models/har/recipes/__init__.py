"""Training recipes of the HAR family: TOML files of :class:`HarTrainConfig` settings.

``cnn.toml`` and ``lstm.toml`` are the recipes of the shipped models; ``harstream train har
--recipe NAME`` (or a path to a TOML file of your own) trains one, flags override single
keys. Reading a recipe imports no JAX, so ``--help`` can show the shipped values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

RECIPES_DIR = Path(__file__).resolve().parent
SHIPPED_RECIPE = "cnn"
# Training settings a recipe may hold (everything but where the data is and the version).
RECIPE_KEYS = (
    "model", "epochs", "batch_size", "seed", "hop", "lr", "weight_decay", "label_smoothing",
    "patience", "augment", "tilt", "scale", "jitter", "warp", "ema", "split_seed",
    "test_fraction", "val_fraction", "test_subjects", "val_subjects",
)  # fmt: skip


def load_recipe(name: str | Path) -> dict[str, Any]:
    """The settings of a recipe: ``name`` of a file in ``models/har/recipes/`` (``cnn``,
    ``lstm``) or the path of a TOML file of your own. Keys are ``HarTrainConfig``
    fields (:data:`RECIPE_KEYS`); an unknown key is an error, as a typo would otherwise be
    ignored."""
    path = Path(name)
    if path.suffix != ".toml":
        path = RECIPES_DIR / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
            raise ValueError(f"no recipe {name!r}; shipped recipes: {known}, or a .toml file")
    try:
        recipe = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"recipe {path}: {exc}") from None
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"recipe {path}: unknown keys {unknown}; known: {sorted(RECIPE_KEYS)}")
    return recipe
