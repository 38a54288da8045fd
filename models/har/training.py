"""Train HAR models on some subjects and test them on subjects they never saw.

Windows of one recording overlap, so a random window split leaks and flatters a model;
here subjects are split into train / validation (early stopping) / test (reported only).
Watches are worn differently (x flipped, other axis frames, see the data README), so
training can augment each window with a random orientation: a mirror of x, a turn about
the axis normal to the watch face (z) and a small tilt. The default turns by 0 or 180
degrees only (``mirror``): turning by any angle (``rotate``) also mixes x and y, which
blurs the arm hanging (gravity on x) with the forearm held level (gravity on -y), and it
did worse on the validation subjects (docs/results/har.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harstream.models.har import network
from harstream.models.har.data import (
    WISDM2019_ACTIVITIES,
    WISDM_V11_ACTIVITIES,
    LoadReport,
    Recording,
    load_recordings,
)
from harstream.models.har.recipes import SHIPPED_RECIPE, load_recipe
from harstream.models.har.windows import DEFAULT_HOP, WINDOW, Windows, make_windows

log = logging.getLogger(__name__)

MODELS = {"cnn": "har-cnn", "lstm": "har-lstm"}
TILT_DEG = 15.0  # largest random tilt of the watch face, on top of the in-plane rotation


@dataclass
class Split:
    """Subjects (recording keys) of each part of a subject split."""

    train: list[str]
    val: list[str]
    test: list[str]


# The defaults are the shipped recipe's: a plain `harstream train har` (and a
# HarTrainConfig given only its data) trains what the shipped model was trained with.
_SHIPPED = load_recipe(SHIPPED_RECIPE)


@dataclass
class HarTrainConfig:
    """Everything a training run depends on; stored in the checkpoint's metadata.

    Defaults: the shipped recipe (``models/har/recipes/cnn.toml``), the one place that
    holds them. ``val_subjects=[]`` trains on every non-test subject for exactly ``epochs``;
    None takes a seeded ``val_fraction`` for early stopping.
    """

    data: str
    columns: dict[str, str] | None = None  # CSV fields -> the file's column names
    model: str = _SHIPPED["model"]
    epochs: int = _SHIPPED["epochs"]
    batch_size: int = _SHIPPED["batch_size"]
    seed: int = _SHIPPED["seed"]
    hop: int = _SHIPPED["hop"]
    lr: float = _SHIPPED["lr"]
    weight_decay: float = _SHIPPED["weight_decay"]
    label_smoothing: float = _SHIPPED["label_smoothing"]
    patience: int = _SHIPPED["patience"]
    augment: str = _SHIPPED["augment"]  # best on validation subjects (docs/results/har.md)
    tilt: float = _SHIPPED["tilt"]  # largest random tilt of the watch face, degrees
    scale: float = _SHIPPED["scale"]  # amplitude scaling by a factor in [1 - s, 1 + s]
    jitter: float = _SHIPPED["jitter"]  # Gaussian noise, m/s^2 (standard deviation)
    warp: float = _SHIPPED["warp"]  # time stretch by a factor in [1/(1 + w), 1 + w]
    ema: float = _SHIPPED["ema"]  # decay of the weight average per step (0: off)
    split_seed: int = _SHIPPED["split_seed"]
    test_fraction: float = _SHIPPED["test_fraction"]
    val_fraction: float = _SHIPPED["val_fraction"]
    test_subjects: list[str] | None = None
    val_subjects: list[str] | None = field(default_factory=lambda: _SHIPPED.get("val_subjects"))
    version: str = field(default_factory=lambda: dt.date.today().strftime("%Y.%m.%d"))

    @classmethod
    def from_recipe(cls, recipe: str | Path, **overrides: Any) -> HarTrainConfig:
        """The config of ``recipe`` (see :func:`load_recipe`) with ``overrides`` on top."""
        return cls(**{**load_recipe(recipe), **overrides})


def class_order(labels: Sequence[str]) -> list[str]:
    """Known WISDM activities in their data-set order, then any others sorted."""
    present = set(labels) - {""}
    known = [*WISDM2019_ACTIVITIES.values(), *WISDM_V11_ACTIVITIES.values()]
    ordered = list(dict.fromkeys(n for n in known if n in present))
    return ordered + sorted(present - set(ordered))


def split_subjects(
    subjects: Sequence[str],
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    test: Sequence[str] | None = None,
    val: Sequence[str] | None = None,
) -> Split:
    """Deterministic split of subjects; explicit ``test``/``val`` lists win over fractions.

    ``val=[]`` means no validation subjects (train for a fixed number of epochs).

    Subjects not named explicitly are shuffled with ``seed`` and the fractions are taken
    (at least one each when there are three or more subjects); the rest train.
    """
    everyone = sorted({str(s) for s in subjects})
    for name, chosen in (("test", test), ("validation", val)):
        unknown = sorted(set(chosen or ()) - set(everyone))
        if unknown:
            raise ValueError(
                f"{name} subject(s) {unknown} not in the data; subjects are {everyone}"
            )
    if test and val and set(test) & set(val):
        raise ValueError(f"subjects {sorted(set(test) & set(val))} are in both test and validation")
    rest = [s for s in everyone if s not in set(test or ()) | set(val or ())]
    rest = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    n = len(everyone)

    def take(fraction: float) -> list[str]:
        k = max(1, round(fraction * n)) if n >= 3 and fraction > 0 else 0
        picked = rest[:k]
        del rest[:k]
        return picked

    test_s = sorted(test) if test else take(test_fraction)
    val_s = sorted(val) if val is not None else take(val_fraction)  # []: no validation
    if not rest:
        raise ValueError(f"no subjects left for training out of {everyone}")
    return Split(train=sorted(rest), val=sorted(val_s), test=sorted(test_s))


def config_split(config: HarTrainConfig, windows: Windows) -> Split:
    """The subject split ``config`` asks for, so the CNN, LSTM and baseline share it."""
    return split_subjects(
        windows.subjects,
        seed=config.split_seed,
        test_fraction=config.test_fraction,
        val_fraction=config.val_fraction,
        test=config.test_subjects,
        val=config.val_subjects,
    )


def fit_normalization(x: np.ndarray) -> dict[str, list[float]]:
    """Per-axis mean and standard deviation of ``(n, window, 3)`` training windows."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    std = flat.std(axis=0)
    return {"mean": flat.mean(axis=0).tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


AUGMENTATIONS = ("rotate", "mirror", "none")


def random_orientations(
    rng: np.random.Generator, n: int, mode: str = "rotate", tilt_deg: float = TILT_DEG
) -> np.ndarray:
    """``(n, 3, 3)`` random watch orientations: mirror x, rotate about z, tilt a little.

    ``rotate`` turns the watch by any angle about z; ``mirror`` only by 0 or 180 degrees
    (the watch on the other wrist or upside down), give or take the tilt angle.
    """
    if mode not in ("rotate", "mirror"):
        raise ValueError(f"unknown orientation mode {mode!r}; expected 'rotate' or 'mirror'")
    out = np.empty((n, 3, 3), np.float32)
    if mode == "rotate":
        angle = rng.uniform(-np.pi, np.pi, n)
    else:
        angle = np.where(rng.random(n) < 0.5, 0.0, np.pi)
        angle += np.deg2rad(rng.uniform(-tilt_deg, tilt_deg, n))
    c, s = np.cos(angle), np.sin(angle)
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    tilt_axis = rng.normal(size=(n, 3))
    tilt_axis[:, 2] = 0.0  # tilt about an in-plane axis
    tilt_axis /= np.linalg.norm(tilt_axis, axis=1, keepdims=True) + 1e-12
    tilt = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg, n))
    for i in range(n):
        rz = np.array([[c[i], -s[i], 0.0], [s[i], c[i], 0.0], [0.0, 0.0, 1.0]])
        k = np.array(
            [
                [0.0, -tilt_axis[i, 2], tilt_axis[i, 1]],
                [tilt_axis[i, 2], 0.0, -tilt_axis[i, 0]],
                [-tilt_axis[i, 1], tilt_axis[i, 0], 0.0],
            ]
        )
        rt = np.eye(3) + np.sin(tilt[i]) * k + (1 - np.cos(tilt[i])) * (k @ k)  # Rodrigues
        out[i] = rt @ rz @ np.diag([mirror[i], 1.0, 1.0])
    return out


def rotate(x: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """Apply one 3x3 matrix per window to ``(n, window, 3)`` samples."""
    return np.einsum("nij,ntj->nti", rotations, x).astype(np.float32)


def random_scale(rng: np.random.Generator, x: np.ndarray, amount: float) -> np.ndarray:
    """Multiply each window by one factor drawn from ``[1 - amount, 1 + amount]``
    (sensor gain and how hard people move differ; the direction of gravity is kept)."""
    factor = rng.uniform(1.0 - amount, 1.0 + amount, (len(x), 1, 1))
    return (x * factor).astype(np.float32)


def random_jitter(rng: np.random.Generator, x: np.ndarray, std: float) -> np.ndarray:
    """Add Gaussian noise of ``std`` m/s^2 to every sample."""
    return (x + rng.normal(0.0, std, x.shape)).astype(np.float32)


def random_warp(rng: np.random.Generator, x: np.ndarray, amount: float) -> np.ndarray:
    """Stretch or squeeze each window in time about its centre by a factor drawn
    log-uniformly from ``[1/(1 + amount), 1 + amount]`` (people walk at different
    cadences), by linear interpolation; samples beyond an edge are mirrored back in."""
    n, length = x.shape[:2]
    bound = np.log1p(amount)
    speed = np.exp(rng.uniform(-bound, bound, (n, 1)))
    centre = (length - 1) / 2.0
    pos = centre + (np.arange(length)[None, :] - centre) * speed
    period = 2.0 * (length - 1)
    pos = np.mod(pos, period)
    pos = np.where(pos > length - 1, period - pos, pos)  # reflect at the edges
    lo = np.clip(np.floor(pos).astype(int), 0, length - 2)
    frac = (pos - lo)[:, :, None]
    rows = np.arange(n)[:, None]
    return (x[rows, lo] * (1.0 - frac) + x[rows, lo + 1] * frac).astype(np.float32)


def augment_windows(rng: np.random.Generator, x: np.ndarray, config: HarTrainConfig) -> np.ndarray:
    """All training augmentations ``config`` asks for: orientation, time warp, scale, jitter."""
    if config.augment != "none":
        x = rotate(x, random_orientations(rng, len(x), config.augment, config.tilt))
    if config.warp > 0:
        x = random_warp(rng, x, config.warp)
    if config.scale > 0:
        x = random_scale(rng, x, config.scale)
    if config.jitter > 0:
        x = random_jitter(rng, x, config.jitter)
    return x


@dataclass
class HarDataset:
    """Windows of a data path, the recordings they were cut from and the load report."""

    windows: Windows
    report: LoadReport
    recordings: list[Recording]


def load_windows(
    path: str | Path, hop: int = DEFAULT_HOP, columns: Mapping[str, str] | None = None
) -> HarDataset:
    """Load recordings from ``path`` (CSV columns mapped by ``columns``) and cut labelled
    windows."""
    recordings, report = load_recordings(path, columns=columns)
    windows = make_windows(recordings, hop=hop)
    if len(windows) == 0:
        raise ValueError(f"{path}: no complete {WINDOW}-sample windows in the data")
    if (windows.labels == "").any():
        raise ValueError(f"{path}: training and evaluation need labelled data (a label column)")
    return HarDataset(windows, report, recordings)


def _check_config(config: HarTrainConfig) -> None:
    if config.augment not in AUGMENTATIONS:
        raise ValueError(
            f"unknown augmentation {config.augment!r}; expected one of {AUGMENTATIONS}"
        )
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; expected one of {sorted(MODELS)}")


@dataclass
class _Fitted:
    """What one training run on one split produced."""

    arch: str
    arch_config: dict[str, Any]
    model: Any
    params: Any
    norm: dict[str, list[float]]
    result: Any  # training.FitResult
    parts: dict[str, Windows]


def _fit_split(
    config: HarTrainConfig, windows: Windows, split: Split, classes: list[str], progress: bool
) -> _Fitted:
    """Train ``config``'s network on ``split.train``; validate on ``split.val`` after each
    epoch (early stopping, best epoch kept), or, without validation subjects, train the
    fixed number of epochs and keep the last (or averaged) weights."""
    import jax
    import optax

    from harstream.models import training

    index = {c: i for i, c in enumerate(classes)}
    parts = {name: windows.of_subjects(getattr(split, name)) for name in ("train", "val", "test")}
    for name, part in parts.items():
        if len(part) == 0 and (name == "train" or getattr(split, name)):
            raise ValueError(f"the {name} subjects have no windows")
    train_w, val_w = parts["train"], parts["val"]
    norm = fit_normalization(train_w.x)
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    y_train = np.asarray([index[c] for c in train_w.labels], np.int32)

    arch = MODELS[config.model]
    arch_config = {"num_classes": len(classes)}
    model = network.build(arch, arch_config)
    params = network.init_params(model, seed=config.seed)

    def prepare(rng: np.random.Generator, batch):
        x, y = batch
        return (augment_windows(rng, x, config) - mean) / std, y

    steps = max(1, len(train_w) // min(config.batch_size, len(train_w)))
    if config.epochs > 1:  # one warm-up epoch when there is room
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, warmup_steps=steps, decay_steps=steps * config.epochs
        )
    else:  # optax warns about a warm-up of 0 steps ("non-positive transition_steps")
        schedule = optax.cosine_decay_schedule(config.lr, steps)
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    validate = None
    if len(val_w):
        y_val = np.asarray([index[c] for c in val_w.labels], np.int32)
        validate = training.classification_eval(
            lambda p, x: model.apply({"params": p}, x), (val_w.x - mean) / std, y_val
        )
    result = training.fit(
        training.classifier_loss(model, config.label_smoothing),
        params,
        (train_w.x, y_train),
        optimizer,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        validate=validate,
        monitor="val_accuracy" if validate else "loss",
        mode="max" if validate else "min",
        patience=config.patience,
        augment=prepare,
        progress=progress,
        desc=arch,
        ema_decay=config.ema,
        restore_best=validate is not None,
    )
    params = jax.device_get(result.params)
    return _Fitted(arch, arch_config, model, params, norm, result, parts)


def train_har(config: HarTrainConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Train, test on held-out subjects, save the checkpoint and curves; return its metadata."""
    import jax

    from harstream.models import reports, training
    from harstream.models.har import checkpoint

    _check_config(config)
    dataset = load_windows(config.data, config.hop, config.columns)
    log.info(dataset.report.summary())
    windows = dataset.windows
    split = config_split(config, windows)
    log.info("subjects: train %s, validation %s, test %s", split.train, split.val, split.test)
    classes = class_order(windows.labels)
    fitted = _fit_split(config, windows, split, classes, progress)
    result, parts, norm, arch = fitted.result, fitted.parts, fitted.norm, fitted.arch
    forward = jax.jit(
        network.make_forward(fitted.model, np.asarray(norm["mean"]), np.asarray(norm["std"]))
    )
    test_report = None
    if len(parts["test"]):
        probs = training.predict_batches(forward, fitted.params, parts["test"].x)
        test_report = reports.classification_report(
            parts["test"].labels, [classes[i] for i in probs.argmax(-1)], classes
        )
        test_report["windows"] = len(parts["test"])
    meta = {
        "name": arch,
        "version": config.version,
        "classes": classes,
        "normalization": norm,
        "hop": config.hop,
        "training": {
            "config": asdict(config),
            "data": str(config.data),
            "split": asdict(split),
            "windows": {k: len(v) for k, v in parts.items()},
            **result.record(),
        },
        "metrics": {
            "validation_accuracy": result.best_value if split.val else None,
            "test": test_report,
        },
    }
    out = Path(out)
    checkpoint.save(out, arch, fitted.arch_config, fitted.params, meta)
    training.save_curves(
        result.history,
        out / "curves.png",
        title=f"{arch}: train {len(split.train)} / validation {len(split.val)} subjects",
        best_epoch=result.best_epoch if split.val else 0,
    )
    return meta


def subject_folds(subjects: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint groups of subjects covering all of them (shuffled with ``seed``,
    sizes differing by at most one), for subject-grouped cross-validation."""
    everyone = sorted({str(s) for s in subjects})
    if not 2 <= k <= len(everyone):
        raise ValueError(f"need 2 <= folds <= {len(everyone)} subjects, got {k}")
    order = [everyone[i] for i in np.random.default_rng(seed).permutation(len(everyone))]
    return [sorted(order[i::k]) for i in range(k)]


def cross_validate_har(
    config: HarTrainConfig, folds: int, out: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Subject-grouped K-fold cross-validation over the non-test subjects of the split.

    The test subjects are left out entirely. Each fold validates on its group of subjects
    after every epoch and trains on the other groups for all ``config.epochs`` (no early
    stopping), so the mean validation curve shows how many epochs to train the final model.
    The CNN/LSTM or the feature baseline (``config.model == "baseline"``); writes ``cv.json``.
    """
    from harstream.models import reports
    from harstream.models.har import checkpoint

    if config.model != "baseline":
        _check_config(config)
    dataset = load_windows(config.data, config.hop, config.columns)
    windows = dataset.windows
    split = config_split(config, windows)
    pool = sorted(split.train + split.val)
    classes = class_order(windows.labels)
    runs = []
    for i, group in enumerate(subject_folds(pool, folds, config.split_seed)):
        fold = Split(train=[s for s in pool if s not in group], val=group, test=[])
        log.info("fold %d/%d: validation subjects %s", i + 1, folds, group)
        if config.model == "baseline":
            from harstream.models.har import baseline

            train_w, val_w = windows.of_subjects(fold.train), windows.of_subjects(fold.val)
            model, _ = baseline.train_baseline(train_w.x, train_w.labels, seed=config.seed)
            accuracy = float((baseline.predict_baseline(model, val_w.x) == val_w.labels).mean())
            runs.append({"val": group, "val_accuracy": [accuracy]})
            continue
        cfg = HarTrainConfig(**{**asdict(config), "patience": config.epochs + 1})
        fitted = _fit_split(cfg, windows, fold, classes, progress)
        result = fitted.result
        # the fold's model, its validation subjects recorded as its test subjects, so that
        # out-of-fold figures (blend weight, streams, calibration) need no retraining
        fold_meta = {
            "name": fitted.arch,
            "version": config.version,
            "classes": classes,
            "normalization": fitted.norm,
            "hop": config.hop,
            "training": {
                "config": asdict(cfg),
                "data": str(config.data),
                "split": asdict(Split(train=fold.train, val=[], test=group)),
                "fold": i + 1,
                "folds": folds,
            },
        }
        checkpoint.save(
            Path(out) / f"fold-{i + 1}", fitted.arch, fitted.arch_config, fitted.params, fold_meta
        )
        runs.append(
            {
                "val": group,
                "val_accuracy": [h["val_accuracy"] for h in result.history],
                "seconds_per_epoch": round(result.mean_epoch_seconds, 2),
                "checkpoint": f"fold-{i + 1}",
            }
        )
    curve = np.mean([r["val_accuracy"] for r in runs], axis=0)
    report = {
        "config": asdict(config),
        "folds": runs,
        "test_subjects_left_out": split.test,
        "mean_val_accuracy": curve.tolist(),
        "final_mean_val_accuracy": float(curve[-1]),
        "best_mean_epoch": int(curve.argmax()) + 1,
        "best_mean_val_accuracy": float(curve.max()),
    }
    reports.write_json(report, Path(out) / "cv.json")
    return report


def train_baseline_report(config: HarTrainConfig, out: str | Path) -> dict[str, Any]:
    """Fit the feature baseline on the training subjects of the same split as ``train_har``
    and score it on the test subjects; write ``report.json`` and a confusion PNG to ``out``."""
    from harstream.models import reports
    from harstream.models.har import baseline

    dataset = load_windows(config.data, config.hop, config.columns)
    windows = dataset.windows
    split = config_split(config, windows)
    if not split.test:
        raise ValueError("the baseline needs test subjects to report on")
    classes = class_order(windows.labels)
    train_w, test_w = windows.of_subjects(split.train), windows.of_subjects(split.test)
    model, seconds = baseline.train_baseline(train_w.x, train_w.labels, seed=config.seed)
    report = reports.classification_report(
        test_w.labels, baseline.predict_baseline(model, test_w.x), classes
    )
    report["windows"] = len(test_w)
    out = Path(out)
    reports.write_json(
        {**report, "fit_seconds": round(seconds, 1), "split": asdict(split)}, out / "report.json"
    )
    reports.save_confusion_png(report, classes, out / "confusion.png", title="feature baseline")
    return report
