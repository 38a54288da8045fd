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
COLUMNS_HELP = (
    "CSV files whose columns have other names: FIELD=COLUMN pairs for the fields "
    "t,x,y,z,label,subject,device, e.g. t=time,x=ax,y=ay,z=az (unnamed fields keep their "
    "own names)"
)
SUMMARY_ARCHS = ("har-cnn", "har-lstm")
DEFAULT_PNG = "har-confusion.png"


def _subjects(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _val_subjects(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else _subjects(text)


def columns_argument(text: str) -> dict[str, str]:
    """``--columns``: :func:`~harstream.models.har.data.parse_columns`, errors as usage."""
    from harstream.models.har.data import parse_columns

    try:
        return parse_columns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(groups: dict[str, Any]) -> None:
    """Add ``train har``, ``evaluate har`` and ``summary``."""
    from harstream.models.har.recipes import SHIPPED_RECIPE, load_recipe
    from harstream.models.har.wearer import DEFAULT_ORDERS, MIN_LABEL_S, SCORE_FROM_S

    shipped = load_recipe(SHIPPED_RECIPE)
    train = groups["train"].add_parser(
        "har",
        help="train the HAR CNN or LSTM (or the feature baseline, or blend a CNN with it) on "
        "accelerometer recordings",
        description="Split subjects into train / validation / test, standardize axes on the "
        "training subjects, train with AdamW, orientation augmentation and early stopping on "
        "validation accuracy (or, with --val-subjects none, a fixed number of epochs on train "
        "and validation subjects together), report accuracy and macro-F1 on the unseen test "
        "subjects and save a checkpoint with training curves (curves.png inside it). With "
        "--folds K, cross-validate instead: K groups of the non-test subjects, each validated "
        "on after every epoch, test subjects untouched; writes cv.json, no checkpoint. "
        "Deterministic for a seed. Every training setting comes from --recipe (default: "
        f"{SHIPPED_RECIPE}, the recipe the shipped har-cnn was trained with; its values are "
        "shown as 'recipe' below); a flag overrides that one setting.",
    )

    def add(*flags: str, **kwargs: Any) -> None:
        """A ``train har`` flag; one that sets a recipe key shows the shipped value."""
        action = train.add_argument(*flags, **kwargs)
        if action.dest in shipped:
            value = shipped[action.dest]
            action.help = f"{action.help} (recipe: {value if value != [] else 'none'})"

    add("--data", required=True, help=DATA_HELP)
    add("--columns", type=columns_argument, metavar="FIELD=COLUMN,...", help=COLUMNS_HELP)
    add(
        "--recipe",
        default=SHIPPED_RECIPE,
        metavar="NAME|FILE",
        help="training settings: cnn or lstm (the shipped models' recipes, TOML files in "
        "harstream/models/har/recipes/) or a TOML file of your own with the same keys; the "
        "'recipe' values below are the default recipe's (default: %(default)s)",
    )
    add(
        "--model",
        choices=("cnn", "lstm", "baseline", "blend"),
        help="cnn: the article's 1D CNN; lstm: 2-layer LSTM; baseline: window "
        "features + gradient boosting (scikit-learn; writes a report, not a checkpoint); "
        "blend: a trained CNN (--cnn) averaged with window features + gradient boosting "
        "fitted on the CNN's training subjects, one checkpoint (har-blend)",
    )
    add(
        "--cnn",
        metavar="PATH",
        help="with --model blend: the trained CNN checkpoint to blend; with --folds too: "
        "the --out folder of the CNN's --folds run (fold-1 .. fold-K), whose folds are "
        "reused; the weight is chosen on their held-out subjects",
    )
    add(
        "--blend-weight",
        type=float,
        metavar="W",
        help="with --model blend (no --folds): weight of the CNN's probabilities, the "
        "boosting's get 1 - W; the one the --folds run chose",
    )
    add("--out", default="runs/har-cnn", help="output directory (checkpoint)")
    add("--epochs", type=int, help="most epochs (early stopping)")
    add("--batch-size", type=int, help="windows per step")
    add(
        "--seed",
        type=int,
        help="initialisation, shuffling, dropout",
    )
    add(
        "--hop",
        type=int,
        help="samples between windows",
    )
    add("--lr", type=float, help="peak learning rate (cosine)")
    add("--weight-decay", type=float, help="AdamW weight decay")
    add(
        "--label-smoothing",
        type=float,
        help="label smoothing; 0 disables it",
    )
    add("--patience", type=int, help="epochs without improvement")
    add(
        "--augment",
        choices=("rotate", "mirror", "none"),
        help="random watch orientation per training window: x mirror and a small tilt plus "
        "any rotation about z (rotate) or 0/180 degrees about z (mirror); none: off "
        "",
    )
    add(
        "--tilt",
        type=float,
        help="largest random tilt of the watch face, degrees",
    )
    add(
        "--scale",
        type=float,
        help="scale each training window by a random factor in [1-S, 1+S]; 0: off ",
    )
    add(
        "--jitter",
        type=float,
        help="add Gaussian noise of this deviation (m/s^2); 0: off",
    )
    add(
        "--warp",
        type=float,
        help="stretch each training window in time by a random factor in [1/(1+W), 1+W]; 0: off",
    )
    add(
        "--ema",
        type=float,
        metavar="DECAY",
        help="validate and keep an exponential moving average of the weights with this "
        "decay per step, e.g. 0.99; 0: off",
    )
    add(
        "--folds",
        type=int,
        metavar="K",
        help="subject-grouped K-fold cross-validation over the non-test subjects (all "
        "--epochs, no early stopping); writes OUT/cv.json instead of a checkpoint",
    )
    add(
        "--test-subjects",
        type=_subjects,
        metavar="S1,S2",
        help="held-out test subjects (default: a seeded --test-fraction of them)",
    )
    add(
        "--val-subjects",
        type=_val_subjects,
        metavar="S1,S2",
        help="validation subjects for early stopping (default: a seeded --val-fraction); "
        "'none': no validation, train all non-test subjects for exactly --epochs and keep "
        "the last (or --ema averaged) weights",
    )
    add("--split-seed", type=int, help="seed of the subject split")
    add(
        "--test-fraction",
        type=float,
        help="share of test subjects",
    )
    add(
        "--val-fraction",
        type=float,
        help="share for validation",
    )
    add(
        "--orders",
        type=int,
        default=DEFAULT_ORDERS,
        metavar="K",
        help="with --model blend --folds: streams per held-out subject scored as in "
        "`evaluate har --stream` (file order and K random orders; default: %(default)s)",
    )
    add("--version", help="version stored in the checkpoint (default: today)")
    add("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    evaluate = groups["evaluate"].add_parser(
        "har",
        help="evaluate a HAR checkpoint on labelled accelerometer recordings",
        description="Accuracy, macro-F1, per-class precision/recall/F1 and the confusion "
        "matrix of a HAR model (the shipped one unless --model is given). By default only the "
        "checkpoint's held-out test subjects are scored when the data contains them, else "
        "every subject (with a warning for those the model was trained on).",
    )
    evaluate.add_argument("--data", required=True, help=DATA_HELP)
    evaluate.add_argument(
        "--columns", type=columns_argument, metavar="FIELD=COLUMN,...", help=COLUMNS_HELP
    )
    evaluate.add_argument(
        "--model",
        metavar="PATH|NAME",
        help="checkpoint directory, or the name of a shipped model: har-blend (the "
        "default), har-cnn, har-lstm",
    )
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
    evaluate.add_argument(
        "--stream",
        action="store_true",
        help="also score each subject's activities as one continuous stream, as a watch sees "
        "them: windows every second across the changes, labelled with the activity at their "
        "end, raw and through the service's smoother; accuracy, macro-F1, delay to follow a "
        "change (median, p90) and missed changes",
    )
    evaluate.add_argument(
        "--orders",
        type=int,
        default=DEFAULT_ORDERS,
        metavar="K",
        help="streams per subject: file order and K seeded random orders of its activity "
        "segments (default: %(default)s)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="seed of the random orders (default: %(default)s)"
    )
    evaluate.add_argument(
        "--calibrate-seconds",
        type=float,
        metavar="S",
        help=f"also calibrate per subject: the first S seconds of each activity are its "
        f"labels (class prototypes on the CNN embedding); scores windows starting >= "
        f"{SCORE_FROM_S:g} s into an activity, plain, calibrated and calibrated + smoothed "
        f"({MIN_LABEL_S:g} <= S <= {SCORE_FROM_S:g})",
    )
    evaluate.set_defaults(func=_evaluate)

    summary = groups[""].add_parser(
        "summary",
        help="print a model's layers, output shapes and parameter counts",
        description="A Keras-like summary of an architecture (6 classes, one 80x3 window).",
    )
    summary.add_argument("arch", choices=SUMMARY_ARCHS, help="architecture")
    summary.set_defaults(func=_summary)


def _train(args: argparse.Namespace) -> int:
    from harstream.models.checkpoint import CheckpointError
    from harstream.models.har.data import DataError
    from harstream.models.har.recipes import RECIPE_KEYS
    from harstream.models.har.training import (
        HarTrainConfig,
        cross_validate_har,
        train_baseline_report,
        train_har,
    )

    given = {k: getattr(args, k) for k in RECIPE_KEYS if getattr(args, k) is not None}
    if args.version:
        given["version"] = args.version
    try:
        config = HarTrainConfig.from_recipe(
            args.recipe, data=args.data, columns=args.columns, **given
        )
        if config.model == "blend":
            return _blend(args, config)
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
    except (CheckpointError, DataError, ValueError) as exc:
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


def _blend(args: argparse.Namespace, config: Any) -> int:
    """``train har --model blend``: choose the weight by --folds, or make the blend."""
    from harstream.models.har.blending import cross_validate_blend, train_blend

    if not args.cnn:
        raise ValueError("--model blend needs --cnn (a CNN checkpoint, or its --folds folder)")
    if args.folds is not None:
        cv = cross_validate_blend(config, args.cnn, args.out, orders=args.orders)
        for i, fold in enumerate(cv["folds"], 1):
            acc = fold["accuracy"]
            print(
                f"fold {i}: validation {','.join(fold['val'])}: CNN {acc['cnn']:.4f}, "
                f"boosting {acc['boosting']:.4f}, blend {acc['blend']:.4f} "
                f"(CNN weight {fold['cnn_weight']:g}, chosen on the other folds)"
            )
        for part, fig in cv["models"].items():
            stream, calibrated = fig["stream"]["accuracy"], fig["calibrated"]["stream_accuracy"]
            print(
                f"{part:<9} per window {fig['accuracy']:.4f}, stream smoothed {stream:.4f} "
                f"(median delay {fig['stream']['delay_s']['median']} s, missed "
                f"{100 * fig['stream']['missed_changes']:.1f} %), 20 s of labels, smoothed "
                + ("n/a (no activity of 40 s)" if calibrated is None else f"{calibrated:.4f}")
            )
        print(
            f"CNN weight chosen on all folds: {cv['cnn_weight']:g}; "
            f"report in {Path(args.out) / 'cv.json'}"
        )
        return 0
    if args.blend_weight is None:
        raise ValueError("--model blend needs --blend-weight (the one its --folds run chose)")
    meta = train_blend(config, args.cnn, args.blend_weight, args.out)
    print(f"saved {meta['name']} ({meta['training']['cnn']} + boosting) to {args.out}")
    if meta["metrics"]["test"] is not None:
        _print_report(
            meta["metrics"]["test"], "test subjects " + ",".join(meta["training"]["split"]["test"])
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
    from harstream.models.har.wearer import format_wearer
    from harstream.models.reports import save_confusion_png, write_json

    try:
        report, subjects, meta = evaluate_har(
            args.model,
            args.data,
            subjects=args.subjects,
            all_subjects=args.all_subjects,
            hop=args.hop,
            stream=args.stream,
            orders=args.orders,
            seed=args.seed,
            calibrate_seconds=args.calibrate_seconds,
            columns=args.columns,
        )
    except (CheckpointError, DataError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    tag = f"{meta['name']}@{meta['version']}"
    _print_report(report, f"{tag} on {len(subjects)} subject(s): {','.join(subjects)}")
    if "stream" in report or "calibrated" in report:
        print("\n" + format_wearer(report))
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
