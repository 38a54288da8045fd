"""Make and cross-validate the blended HAR model (:mod:`harstream.models.har.blend`).

A blend is made from a trained CNN checkpoint: the feature + gradient-boosting model is
fitted on the same training subjects and both go into one checkpoint with the weight of
the CNN's probabilities. The weight is chosen by subject-grouped cross-validation
(:func:`cross_validate_blend`) from the fold checkpoints that ``harstream train har
--folds K`` leaves for the CNN: for each fold the boosting is fitted on the fold's
training subjects, both models score the fold's held-out subjects (windows, and the
subjects' activity streams as the wearer sees them), and the weight that is best on the
pooled out-of-fold windows is the shipped one. The figures reported for a fold use the
weight chosen on the *other* folds only, so choosing the weight does not flatter them.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harstream.models.har import baseline, blend, checkpoint, wearer
from harstream.models.har.training import HarTrainConfig, Split, class_order, load_windows
from harstream.models.har.windows import Windows

log = logging.getLogger(__name__)

WEIGHT_GRID = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.05))
CALIBRATE_SECONDS = 20.0  # the labels per activity the cross-validation calibrates with
PARTS = ("cnn", "boosting", "blend")


def fit_boost(
    windows: Windows, classes: list[str], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, int], float]:
    """Boosted trees on the blend's (JAX) window features of ``windows``, exported as
    arrays: ``(arrays, tree shape, seconds to fit)``."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[c] for c in windows.labels], np.int32)
    model, seconds = baseline.fit_boosting(blend.features_numpy(windows.x), y, seed)
    arrays, shape = blend.export_trees(model, len(classes))
    return arrays, shape, seconds


def choose_weight(probs_cnn: np.ndarray, probs_boost: np.ndarray, labels: np.ndarray) -> float:
    """The CNN weight of :data:`WEIGHT_GRID` with the best accuracy (ties: more CNN)."""
    accuracy = [
        float(((w * probs_cnn + (1 - w) * probs_boost).argmax(axis=1) == labels).mean())
        for w in WEIGHT_GRID
    ]
    best = max(accuracy)
    return max(w for w, a in zip(WEIGHT_GRID, accuracy, strict=True) if a == best)


def _load_cnn(path: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    model, params, meta = checkpoint.load(path)
    if isinstance(model, blend.HarBlend):
        raise ValueError(f"{path} is a blend already; give the CNN checkpoint it was made of")
    return model, params, meta


def _check_classes(classes: list[str], windows: Windows, path: str | Path) -> None:
    found = class_order(windows.labels)
    if found != classes:
        raise ValueError(f"{path} knows the classes {classes}; the data has {found}")


def _save(
    out: Path,
    cnn_meta: dict[str, Any],
    cnn_params: Any,
    boost: tuple[dict[str, np.ndarray], dict[str, int], float],
    weight: float,
    version: str,
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    arrays, shape, seconds = boost
    classes = list(cnn_meta["classes"])
    config = blend.blend_config(len(classes), weight, shape, cnn=cnn_meta["arch"])
    meta = {
        "name": blend.ARCH,
        "version": version,
        "classes": classes,
        "normalization": cnn_meta["normalization"],
        "hop": cnn_meta["hop"],
        "training": {
            "cnn": f"{cnn_meta['name']}@{cnn_meta['version']}",
            "cnn_training": {k: v for k, v in cnn_meta["training"].items() if k != "history"},
            "split": cnn_meta["training"]["split"],
            "boosting": {**shape, "fit_seconds": round(seconds, 1)},
            "cnn_weight": weight,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **training,
        },
        "metrics": metrics,
    }
    checkpoint.save(out, blend.ARCH, config, {"cnn": cnn_params, "boost": arrays}, meta)
    return meta


def _parts(cnn_model: Any, cnn_meta: dict[str, Any], shape: dict[str, int]):
    """Jitted ``(params, x) -> (CNN probabilities, embedding, boosting probabilities)``."""
    import jax

    classes = cnn_meta["classes"]
    settings = blend.build(blend.blend_config(len(classes), 1.0, shape, cnn=cnn_meta["arch"]))
    norm = cnn_meta["normalization"]
    return jax.jit(
        blend.make_parts_forward(settings, np.asarray(norm["mean"]), np.asarray(norm["std"]))
    )


def train_blend(
    config: HarTrainConfig, cnn_path: str | Path, weight: float, out: str | Path
) -> dict[str, Any]:
    """A blend of the CNN at ``cnn_path`` with boosting fitted on its training subjects,
    the CNN's probabilities weighted ``weight``; scored on the CNN's test subjects (if
    any, and in ``config.data``); saved to ``out``. Returns the checkpoint's metadata."""
    from harstream.models import reports, training

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--blend-weight must be in [0, 1], got {weight}")
    cnn_model, cnn_params, cnn_meta = _load_cnn(cnn_path)
    classes = list(cnn_meta["classes"])
    windows = load_windows(config.data, cnn_meta["hop"], config.columns).windows
    _check_classes(classes, windows, cnn_path)
    split = Split(**cnn_meta["training"]["split"])
    boost = fit_boost(windows.of_subjects(split.train), classes, config.seed)
    test = windows.of_subjects(split.test)
    metrics: dict[str, Any] = {"test": None}
    if len(test):
        pc, _, pb = training.predict_batches(
            _parts(cnn_model, cnn_meta, boost[1]), {"cnn": cnn_params, "boost": boost[0]}, test.x
        )
        for part, probs in zip(PARTS, (pc, pb, weight * pc + (1 - weight) * pb), strict=True):
            report = reports.classification_report(
                test.labels, [classes[i] for i in probs.argmax(axis=1)], classes
            )
            report["windows"] = len(test)
            metrics["test" if part == "blend" else f"test_{part}"] = report
    training_info = {"data": str(config.data), "boosting_seed": config.seed}
    meta = _save(
        Path(out), cnn_meta, cnn_params, boost, weight, config.version, training_info, metrics
    )
    curves = Path(cnn_path) / "curves.png"
    if curves.is_file():  # the blend's only trained-by-epochs part is its CNN
        shutil.copyfile(curves, Path(out) / "curves.png")
    return meta


def _fold_dirs(cnn_cv: Path) -> list[Path]:
    folds = sorted(cnn_cv.glob("fold-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folds:
        raise ValueError(
            f"{cnn_cv} holds no fold-K checkpoints; run `harstream train har --folds K "
            f"--out {cnn_cv}` for the CNN first"
        )
    return folds


def cross_validate_blend(
    config: HarTrainConfig,
    cnn_cv: str | Path,
    out: str | Path,
    *,
    orders: int = wearer.DEFAULT_ORDERS,
    seed: int = 0,
) -> dict[str, Any]:
    """Out-of-fold figures of the CNN, the boosting and their blend from the CNN fold
    checkpoints in ``cnn_cv``; the blend weight chosen on them; fold blends and ``cv.json``
    written to ``out``.

    Per model: per-window accuracy and macro-F1 (windows every ``hop`` samples), the
    wearer's stream (file order and ``orders`` random orders, as ``evaluate har
    --stream``) and calibration on :data:`CALIBRATE_SECONDS` of labels (as ``evaluate har
    --calibrate-seconds``), pooled over the folds' held-out subjects.
    """
    from harstream.models import reports, training

    folds = _fold_dirs(Path(cnn_cv))
    first = _load_cnn(folds[0])[2]
    classes = list(first["classes"])
    dataset = load_windows(config.data, first["hop"], config.columns)
    windows = dataset.windows
    _check_classes(classes, windows, folds[0])
    runs = []
    for i, path in enumerate(folds):
        cnn_model, cnn_params, cnn_meta = _load_cnn(path)
        split = Split(**cnn_meta["training"]["split"])
        log.info("fold %d/%d: boosting on %d subjects, scoring %s", i + 1, len(folds),
                 len(split.train), split.test)  # fmt: skip
        boost = fit_boost(windows.of_subjects(split.train), classes, config.seed)
        parts = _parts(cnn_model, cnn_meta, boost[1])
        params = {"cnn": cnn_params, "boost": boost[0]}
        held_out = windows.of_subjects(split.test)
        pc, _, pb = training.predict_batches(parts, params, held_out.x)
        streams = []
        for stream in wearer.subject_streams(
            dataset.recordings, split.test, classes, orders=orders, seed=seed
        ):
            outputs = training.predict_batches(parts, params, stream.x)
            stream.x = stream.x[:0]  # scored; keep memory to the outputs
            streams.append((stream, *outputs))
        y = np.asarray([classes.index(c) for c in held_out.labels])
        runs.append(
            {"path": path, "cnn": (cnn_params, cnn_meta), "boost": boost, "split": split,
             "labels": y, "cnn_probs": pc, "boost_probs": pb, "streams": streams}
        )  # fmt: skip

    def pooled(key: str, skip: int | None = None) -> np.ndarray:
        return np.concatenate([r[key] for j, r in enumerate(runs) if j != skip])

    weight = choose_weight(pooled("cnn_probs"), pooled("boost_probs"), pooled("labels"))
    for j, run in enumerate(runs):  # each fold's weight is chosen without its subjects
        run["weight"] = choose_weight(
            pooled("cnn_probs", j), pooled("boost_probs", j), pooled("labels", j)
        )
    figures = {part: _figures(runs, part, classes, orders, seed) for part in PARTS}
    out = Path(out)
    fold_reports = []
    for i, run in enumerate(runs):
        cnn_params, cnn_meta = run["cnn"]
        w = run["weight"]
        accuracy = {
            part: float((probs.argmax(axis=1) == run["labels"]).mean())
            for part, probs in zip(
                PARTS,
                (run["cnn_probs"], run["boost_probs"],
                 w * run["cnn_probs"] + (1 - w) * run["boost_probs"]),
                strict=True,
            )
        }  # fmt: skip
        _save(
            out / f"fold-{i + 1}",
            cnn_meta,
            cnn_params,
            run["boost"],
            w,
            config.version,
            {"data": str(config.data), "fold": i + 1, "folds": len(runs)},
            {"validation_accuracy": accuracy["blend"]},
        )
        fold_reports.append(
            {
                "val": run["split"].test,
                "cnn_weight": w,
                "accuracy": accuracy,
                "checkpoint": f"fold-{i + 1}",
                "cnn_checkpoint": str(run["path"]),
            }  # fmt: skip
        )
    report = {
        "config": asdict(config),
        "cnn_cv": str(cnn_cv),
        "cnn_weight": weight,
        "weight_grid": list(WEIGHT_GRID),
        "folds": fold_reports,
        "models": figures,
    }
    reports.write_json(report, out / "cv.json")
    return report


def _figures(
    runs: list[dict[str, Any]], part: str, classes: list[str], orders: int, seed: int
) -> dict[str, Any]:
    """Pooled out-of-fold figures of one model: the CNN (weight 1), the boosting (weight
    0) or the blend (each fold's weight, chosen on the other folds)."""
    from harstream.models import reports

    truth, predicted, scored = [], [], []
    for run in runs:
        w = {"cnn": 1.0, "boosting": 0.0, "blend": run["weight"]}[part]
        probs = w * run["cnn_probs"] + (1 - w) * run["boost_probs"]
        truth += [classes[i] for i in run["labels"]]
        predicted += [classes[i] for i in probs.argmax(axis=1)]
        for stream, pc, emb, pb in run["streams"]:
            scored.append(wearer.scored_stream(stream, w * pc + (1 - w) * pb, emb))
    window = reports.classification_report(truth, predicted, classes)
    return {
        "accuracy": float(window["accuracy"]),
        "macro_f1": float(window["macro_f1"]),
        "windows": len(truth),
        "confusion": window["confusion"],
        "stream": wearer.stream_report(scored, classes, orders, seed),
        "calibrated": wearer.calibrated_report(scored, len(classes), CALIBRATE_SECONDS),
    }
