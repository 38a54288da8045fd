"""``harstream train har``, ``harstream evaluate har`` and ``harstream summary``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_HELP = (
    "a file or a directory of files: WISDM 2019 (subject,activity,[timestamp,]x,y,z;), "
    "WISDM v1.1 raw (user,activity,timestamp,x,y,z;) or CSV with a header naming "
    "t,x,y,z[,label][,subject][,device]; the layout is detected per file"
)
SUMMARY_ARCHS = ("har-cnn", "har-lstm")
DEFAULT_PNG = "har-confusion.png"


def _subjects(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _val_subjects(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else _subjects(text)


def register(groups: dict[str, Any]) -> None:
    """Add ``train har``, ``evaluate har`` and ``summary``."""
    from harstream.models.har.windows import DEFAULT_HOP

    train = groups["train"].add_parser(
        "har",
        help="train the HAR CNN or LSTM (or the feature baseline) on accelerometer recordings",
        description="Split subjects into train / validation / test, standardize axes on the "
        "training subjects, train with AdamW, orientation augmentation and early stopping on "
        "validation accuracy (or, with --val-subjects none, a fixed number of epochs on train "
        "and validation subjects together), report accuracy and macro-F1 on the unseen test "
        "subjects and save a checkpoint with training curves (curves.png inside it). With "
        "--folds K, cross-validate instead: K groups of the non-test subjects, each validated "
        "on after every epoch, test subjects untouched; writes cv.json, no checkpoint. "
        "Deterministic for a seed.",
    )
    train.add_argument("--data", required=True, help=DATA_HELP)
    train.add_argument(
        "--model",
        choices=("cnn", "lstm", "baseline"),
        default="cnn",
        help="cnn (default): the article's 1D CNN; lstm: 2-layer LSTM; baseline: window "
        "features + gradient boosting (scikit-learn; writes a report, not a checkpoint)",
    )
    train.add_argument(
        "--out", default="runs/har-cnn", help="output directory (checkpoint) (default: %(default)s)"
    )
    train.add_argument(
        "--epochs", type=int, default=40, help="most epochs (early stopping) (default: %(default)s)"
    )
    train.add_argument(
        "--batch-size", type=int, default=400, help="windows per step (default: %(default)s)"
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initialisation, shuffling, dropout (default: %(default)s)",
    )
    train.add_argument(
        "--hop",
        type=int,
        default=DEFAULT_HOP,
        help="samples between windows (default: %(default)s)",
    )
    train.add_argument(
        "--lr", type=float, default=2e-3, help="peak learning rate (cosine) (default: %(default)s)"
    )
    train.add_argument(
        "--weight-decay", type=float, default=1e-3, help="AdamW weight decay (default: %(default)s)"
    )
    train.add_argument(
        "--label-smoothing",
        type=float,
        default=0.1,
        help="label smoothing; 0 disables it (default: %(default)s)",
    )
    train.add_argument(
        "--patience", type=int, default=8, help="epochs without improvement (default: %(default)s)"
    )
    train.add_argument(
        "--augment",
        choices=("rotate", "mirror", "none"),
        default="mirror",
        help="random watch orientation per training window: x mirror and a small tilt plus "
        "any rotation about z (rotate) or 0/180 degrees about z (mirror); none: off "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--tilt",
        type=float,
        default=15.0,
        help="largest random tilt of the watch face, degrees (default: %(default)s)",
    )
    train.add_argument(
        "--scale",
        type=float,
        default=0.0,
        help="scale each training window by a random factor in [1-S, 1+S]; 0: off "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="add Gaussian noise of this deviation (m/s^2); 0: off (default: %(default)s)",
    )
    train.add_argument(
        "--warp",
        type=float,
        default=0.0,
        help="stretch each training window in time by a random factor in [1/(1+W), 1+W]; "
        "0: off (default: %(default)s)",
    )
    train.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and keep an exponential moving average of the weights with this "
        "decay per step, e.g. 0.99; 0: off (default: %(default)s)",
    )
    train.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="subject-grouped K-fold cross-validation over the non-test subjects (all "
        "--epochs, no early stopping); writes OUT/cv.json instead of a checkpoint",
    )
    train.add_argument(
        "--test-subjects",
        type=_subjects,
        metavar="S1,S2",
        help="held-out test subjects (default: a seeded --test-fraction of them)",
    )
    train.add_argument(
        "--val-subjects",
        type=_val_subjects,
        metavar="S1,S2",
        help="validation subjects for early stopping (default: a seeded --val-fraction); "
        "'none': no validation, train all non-test subjects for exactly --epochs and keep "
        "the last (or --ema averaged) weights",
    )
    train.add_argument(
        "--split-seed", type=int, default=0, help="seed of the subject split (default: %(default)s)"
    )
    train.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of test subjects (default: %(default)s)",
    )
    train.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="share for validation (default: %(default)s)",
    )
    train.add_argument("--version", help="version stored in the checkpoint (default: today)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    evaluate = groups["evaluate"].add_parser(
        "har",
        help="evaluate a HAR checkpoint on labelled accelerometer recordings",
        description="Accuracy, macro-F1, per-class precision/recall/F1 and the confusion "
        "matrix of a HAR model (the shipped one unless --model is given). By default only the "
        "checkpoint's held-out test subjects are scored when the data contains them.",
    )
    evaluate.add_argument("--data", required=True, help=DATA_HELP)
    evaluate.add_argument("--model", help="checkpoint directory (default: the shipped har-cnn)")
    evaluate.add_argument("--json", metavar="OUT", help="write the report as JSON")
    evaluate.add_argument(
        "--png",
        metavar="OUT",
        help=f"confusion matrix PNG (default: beside --json, else ./{DEFAULT_PNG})",
    )
    group = evaluate.add_mutually_exclusive_group()
    group.add_argument(
        "--subjects", type=_subjects, metavar="S1,S2", help="score only these subjects"
    )
    group.add_argument(
        "--all-subjects",
        action="store_true",
        help="score every subject, also those the model was trained on",
    )
    evaluate.add_argument("--hop", type=int, help="samples between windows (default: model's)")
    evaluate.set_defaults(func=_evaluate)

    summary = groups[""].add_parser(
        "summary",
        help="print a model's layers, output shapes and parameter counts",
        description="A Keras-like summary of an architecture (6 classes, one 80x3 window).",
    )
    summary.add_argument("arch", choices=SUMMARY_ARCHS, help="architecture")
    summary.set_defaults(func=_summary)


def _train(args: argparse.Namespace) -> int:
    from harstream.models.har.data import DataError
    from harstream.models.har.training import (
        HarTrainConfig,
        cross_validate_har,
        train_baseline_report,
        train_har,
    )

    config = HarTrainConfig(
        data=args.data,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        hop=args.hop,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        patience=args.patience,
        augment=args.augment,
        tilt=args.tilt,
        scale=args.scale,
        jitter=args.jitter,
        warp=args.warp,
        ema=args.ema,
        split_seed=args.split_seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        test_subjects=args.test_subjects,
        val_subjects=args.val_subjects,
        **({"version": args.version} if args.version else {}),
    )
    try:
        if args.folds is not None:
            cv = cross_validate_har(config, args.folds, args.out, progress=not args.no_progress)
            for i, fold in enumerate(cv["folds"], 1):
                print(
                    f"fold {i}: validation {','.join(fold['val'])}: final accuracy "
                    f"{fold['val_accuracy'][-1]:.4f}"
                )
            print(
                f"mean validation accuracy over {args.folds} folds: final "
                f"{cv['final_mean_val_accuracy']:.4f}, best {cv['best_mean_val_accuracy']:.4f} "
                f"at epoch {cv['best_mean_epoch']}; report in {Path(args.out) / 'cv.json'}"
            )
            return 0
        if args.model == "baseline":
            report = train_baseline_report(config, args.out)
            _print_report(report, f"baseline on test subjects, report in {args.out}")
            return 0
        meta = train_har(config, args.out, progress=not args.no_progress)
    except (DataError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    training = meta["training"]
    val_accuracy = meta["metrics"]["validation_accuracy"]
    print(
        f"saved {meta['name']} to {args.out}: {training['epochs_run']} epochs "
        f"(best {training['best_epoch']}), {training['seconds_per_epoch']:.1f} s/epoch, "
        + (
            f"validation accuracy {val_accuracy:.4f}"
            if val_accuracy is not None
            else "no validation"
        )
    )
    if meta["metrics"]["test"] is not None:
        _print_report(
            meta["metrics"]["test"], "test subjects " + ",".join(training["split"]["test"])
        )
    return 0


def _print_report(report: dict[str, Any], title: str) -> None:
    from harstream.models.reports import format_report

    print(f"\n{title}")
    print(format_report(report))


def _evaluate(args: argparse.Namespace) -> int:
    from harstream.models.checkpoint import CheckpointError
    from harstream.models.har.data import DataError
    from harstream.models.har.evaluation import evaluate_har
    from harstream.models.reports import save_confusion_png, write_json

    try:
        report, subjects, meta = evaluate_har(
            args.model,
            args.data,
            subjects=args.subjects,
            all_subjects=args.all_subjects,
            hop=args.hop,
        )
    except (CheckpointError, DataError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    tag = f"{meta['name']}@{meta['version']}"
    _print_report(report, f"{tag} on {len(subjects)} subject(s): {','.join(subjects)}")
    png = args.png or (
        str(Path(args.json).with_suffix("")) + "-confusion.png" if args.json else DEFAULT_PNG
    )
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    save_confusion_png(report, meta["classes"], png, title=tag)
    print(f"confusion matrix saved to {png}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    from harstream.models.har import network
    from harstream.models.har.windows import AXES, WINDOW
    from harstream.models.summary import summarize

    model = network.build(args.arch, {"num_classes": 6})
    example = jax.ShapeDtypeStruct((1, WINDOW, AXES), jnp.float32)
    print(summarize(model, example, args.arch))
    return 0
