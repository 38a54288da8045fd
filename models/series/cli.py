"""``harstream experiment lag`` and ``harstream train series``."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(groups: dict[str, Any]) -> None:
    """Add ``experiment lag`` and ``train series``."""
    lag = groups["experiment"].add_parser(
        "lag",
        help="LSTM vs MLP on short and long lags (the article's experiment, and further)",
        description="Reproduce the article's experiment (y = i + 0.5(i-1) + 0.2(i-2) + "
        "0.1(i-3), LSTM(8) over 5 steps vs an MLP on one value), then test its claim that "
        "LSTMs win on long lags with dependencies 20-50 steps back. Prints a table of test "
        "MSEs and saves a PNG of the prediction errors.",
    )
    lag.add_argument("--out", default="runs/lag", help="directory for the PNG and results")
    lag.add_argument("--lags", type=int, nargs="*", default=[20, 50], help="long lags to test")
    lag.add_argument("--epochs", type=int, default=300, help="most epochs (early stopping)")
    lag.add_argument("--patience", type=int, default=40, help="epochs without improvement")
    lag.add_argument("--seed", type=int, default=0)
    lag.set_defaults(func=_lag)

    train = groups["train"].add_parser(
        "series",
        help="train the streaming one-step-ahead forecaster",
        description="Train a forecaster of the next value from the last k values. Without "
        "--data it learns from varied synthetic series with per-window normalization, so it "
        "works on streams of any level and scale; with --data it learns your series (split "
        "in time). The test result is shown beside the naive last-value forecast.",
    )
    train.add_argument("--data", help="one number per line, or a CSV with a value column")
    train.add_argument("--column", help="CSV column to read (default: value, y or x)")
    train.add_argument(
        "--model", choices=("lstm", "mlp"), default="lstm", help="architecture (default: lstm)"
    )
    train.add_argument("--window", type=int, default=5, help="k: values per forecast (default: 5)")
    train.add_argument(
        "--normalization", choices=("window", "global"), default="window",
        help="window: scale each window by its own level and spread; global: fitted mean/std "
        "(default: window)",
    )  # fmt: skip
    train.add_argument(
        "--epochs", type=int, default=60, help="most epochs (early stopping) (default: 60)"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="data, initialisation, shuffling (default: 0)"
    )
    train.add_argument(
        "--out", default="runs/series-lstm", help="checkpoint directory (default: runs/series-lstm)"
    )
    train.add_argument("--version", help="version string stored in the checkpoint (default: today)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)


def _lag(args: argparse.Namespace) -> int:
    from harstream.models.series import experiment

    if any(lag < 1 for lag in args.lags):
        log.error("lags must be positive, got %s", args.lags)
        return 2
    cases = experiment.run(
        seed=args.seed, epochs=args.epochs, long_lags=tuple(args.lags), patience=args.patience
    )
    table = experiment.table(cases)
    print(table)
    out = Path(args.out)
    png = experiment.plot(cases, out / "lag_errors.png")
    rows = [{k: v for k, v in asdict(c).items() if k != "errors"} for c in cases]
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"saved {png}, {out / 'results.json'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from harstream.models.series.training import SeriesTrainConfig, train_forecaster

    config = SeriesTrainConfig(
        data=args.data,
        column=args.column,
        model=args.model,
        window=args.window,
        normalization=args.normalization,
        epochs=args.epochs,
        seed=args.seed,
        **({"version": args.version} if args.version else {}),
    )
    try:
        meta = train_forecaster(config, args.out, progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    test = meta["metrics"]["test"]
    print(
        f"test MSE {test['mse']:.6g} on {test['windows']} windows; naive last-value "
        f"forecast {test['naive_mse']:.6g} (ratio {test['ratio_to_naive']:.3f})"
    )
    print(f"saved {args.out} (curves: {args.out}/curves.png)")
    return 0
