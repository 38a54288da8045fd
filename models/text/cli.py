"""``harstream train text`` and ``harstream evaluate text``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)

DATA_HELP = (
    "labelled messages: the SMS Spam Collection layout (label<TAB>text per line) or a CSV "
    "with a header naming a text column (text or message) and a label column (label or class)"
)


def register(groups: dict[str, Any]) -> None:
    """Add ``train text`` and ``evaluate text``."""
    train = groups["train"].add_parser(
        "text",
        help="train the text CNN (and TF-IDF baselines) on labelled messages",
        description="Train a text CNN on a stratified, seeded train/validation split, test it "
        "on held-out messages beside TF-IDF + linear baselines, and save a checkpoint.",
    )
    train.add_argument("--data", required=True, help=DATA_HELP)
    train.add_argument(
        "--model", choices=("kim", "stack", "hybrid"), default="kim",
        help="kim: Kim (2014) parallel convolutions 3/4/5; stack: the article's 3 x "
        "Conv1D(128,5); hybrid: Kim's CNN over words plus the same over characters, as the "
        "shipped text-hybrid (default: kim)",
    )  # fmt: skip
    train.add_argument(
        "--out",
        default="runs/text-cnn",
        help="checkpoint directory to write (default: runs/text-cnn)",
    )
    train.add_argument(
        "--epochs", type=int, default=30, help="most epochs (early stopping) (default: 30)"
    )
    train.add_argument("--batch-size", type=int, default=50, help="messages per step (default: 50)")
    train.add_argument(
        "--lr", type=float, default=1e-3, help="Adam(W) learning rate (default: 0.001)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="initialisation, shuffling, dropout (default: 0)"
    )
    train.add_argument(
        "--split-seed", type=int, default=0, help="seed of the data split (default: 0)"
    )
    train.add_argument(
        "--patience", type=int, default=5, help="epochs without improvement (default: 5)"
    )
    train.add_argument(
        "--embeddings", metavar="FILE",
        help="pretrained word vectors in GloVe text format (e.g. glove.6B.100d.txt); "
        "words not in the file get random vectors; default: learn embeddings from scratch",
    )  # fmt: skip
    train.add_argument("--embed-dim", type=int, default=100, help="embedding size (default: 100)")
    train.add_argument("--max-len", type=int, help="tokens per message (default: 99th pct.)")
    train.add_argument("--char-len", type=int, help="characters per message (hybrid)")
    train.add_argument(
        "--min-count", type=int, default=2, help="rarer training words are OOV (default: 2)"
    )
    train.add_argument("--version", help="version string stored in the checkpoint (default: today)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    evaluate = groups["evaluate"].add_parser(
        "text",
        help="evaluate a text checkpoint on labelled messages",
        description="Accuracy, macro-F1, per-class precision/recall/F1 and the Matthews "
        "correlation of a text model (the shipped one unless --model is given).",
    )
    evaluate.add_argument("--data", required=True, help=DATA_HELP)
    evaluate.add_argument("--model", help="checkpoint directory (default: the shipped model)")
    evaluate.add_argument("--json", metavar="OUT", help="write the report as JSON")
    evaluate.add_argument("--png", metavar="OUT", help="save the confusion matrix as PNG")
    evaluate.add_argument(
        "--held-out", action="store_true",
        help="score only the test messages of the model's own split (needs its training file)",
    )  # fmt: skip
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from harstream.models.text.training import TextTrainConfig, train_text

    config = TextTrainConfig(
        data=args.data,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        split_seed=args.split_seed,
        patience=args.patience,
        embeddings=args.embeddings,
        embed_dim=args.embed_dim,
        max_len=args.max_len,
        char_len=args.char_len,
        min_count=args.min_count,
        **({"version": args.version} if args.version else {}),
    )
    try:
        meta = train_text(config, args.out, progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    _print_comparison(meta)
    print(f"saved {args.out} (curves: {args.out}/curves.png)")
    return 0


def _print_comparison(meta: dict[str, Any]) -> None:
    rows = [(meta["name"], meta["metrics"]["test"])]
    rows += list(meta["metrics"]["baselines"].items())
    n = meta["metrics"]["test"]["messages"]
    print(f"held-out test messages: {n}")
    print(f"{'model':<20} {'accuracy':>9} {'macro-F1':>9} {'MCC':>7} {'errors':>7}")
    for name, r in rows:
        errors = round((1 - r["accuracy"]) * r["messages"])
        print(f"{name:<20} {r['accuracy']:9.4f} {r['macro_f1']:9.4f} {r['mcc']:7.4f} {errors:7d}")


def _evaluate(args: argparse.Namespace) -> int:
    from harstream.models import reports
    from harstream.models.checkpoint import CheckpointError
    from harstream.models.text.evaluation import evaluate_checkpoint

    try:
        report, meta = evaluate_checkpoint(args.model, args.data, held_out_only=args.held_out)
    except (OSError, ValueError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    classes = meta["classes"]
    tag = f"{meta['name']}@{meta['version']}"
    print(f"model {tag} on {report['messages']} messages from {args.data}")
    print(reports.format_report(report, classes))
    if args.json:
        reports.write_json(report, args.json)
    if args.png:
        reports.save_confusion_png(report, classes, args.png, title=tag)
    return 0
