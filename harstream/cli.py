"""The ``harstream`` command. Each area registers its own subcommands here.

Areas (``serve``, each model family's commands, replay/simulate/demo, bench) own their
argument definitions in a ``register(groups)`` function, where
``groups`` maps a parent command (``""`` for the top level, ``"train"``, ``"evaluate"``,
``"experiment"``) to its argparse sub-parser collection. Each subcommand sets
``func(args) -> int``. Heavy imports (JAX, paho) happen inside those functions, so that
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from harstream import __version__, families
from harstream.bench import cli as bench_cli
from harstream.dashboard import cli as dashboard_cli
from harstream.extras import MissingExtra, require
from harstream.replay import cli as replay_cli
from harstream.stream import cli as serve_cli

GROUPS = {
    "train": "train a model family on your data and save a checkpoint",
    "evaluate": "evaluate a checkpoint on labelled data",
    "experiment": "reproduce the article's experiments",
}
# Every command of these groups writes PNGs (curves, confusion matrices: matplotlib), and
# the classifiers' baselines and text metrics use scikit-learn: the `train` extra.
NEEDS_TRAIN_EXTRA = ("train", "evaluate", "experiment")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="harstream",
        description="Real-time activity recognition over MQTT with jit-compiled JAX/Flax models.",
    )
    parser.add_argument("--version", action="version", version=f"harstream {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {"": top}
    for name, help_text in GROUPS.items():
        description = help_text.capitalize() + "."
        if name in NEEDS_TRAIN_EXTRA:
            description += " Needs the train extra: pip install 'harstream[train]'."
        sub = top.add_parser(name, help=help_text, description=description)
        groups[name] = sub.add_subparsers(dest="target", metavar="FAMILY", required=True)
    # serve, then each family's train/evaluate commands (from the table of families), then
    # the tools; imported statically, so a broken module is an error, never a missing command
    for area in (
        serve_cli,
        *(f.cli for f in families.FAMILIES),
        replay_cli,
        dashboard_cli,
        bench_cli,
    ):
        area.register(groups)
    add_log_flags(parser, default="INFO")
    return parser


def add_log_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``-v`` and ``--log-level`` on ``parser`` and, recursively, on every subcommand.

    Only the top level has a default: argparse copies a subcommand's defaults over what the
    top level parsed, so ``harstream -v serve`` would otherwise lose its ``-v``.
    """
    kwargs = {"default": default} if default else {"default": argparse.SUPPRESS}
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="DEBUG",
        help="debug logging (--log-level debug)",
        **kwargs,
    )
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"log level: {', '.join(level.lower() for level in LOG_LEVELS)} (default info)",
        **kwargs,
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                add_log_flags(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harstream`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # JAX reports at INFO that it found no TPU/GPU plugin; on a CPU machine that is noise.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        if args.command in NEEDS_TRAIN_EXTRA:
            require(f"harstream {args.command}", "sklearn", "matplotlib")
        return int(args.func(args) or 0)
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
