"""The ``harstream`` command. Each area registers its own subcommands here.

Areas own their argument definitions in a ``register(groups)`` function, where
``groups`` maps a parent command (``""`` for the top level, ``"train"``, ``"evaluate"``,
``"experiment"``) to its argparse sub-parser collection. Each subcommand sets
``func(args) -> int``. Heavy imports (JAX, paho) happen inside those functions, so that
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from harstream import __version__

AREAS = (
    "harstream.stream.cli",
    "harstream.models.har.cli",
    "harstream.models.text.cli",
    "harstream.models.series.cli",
    "harstream.replay.cli",
    "harstream.bench.cli",
)
GROUPS = {
    "train": "train a model family on your data and save a checkpoint",
    "evaluate": "evaluate a checkpoint on labelled data",
    "experiment": "reproduce the article's experiments",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="harstream",
        description="Real-time activity recognition over MQTT with jit-compiled JAX/Flax models.",
    )
    parser.add_argument("--version", action="version", version=f"harstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {"": top}
    for name, help_text in GROUPS.items():
        sub = top.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
        groups[name] = sub.add_subparsers(dest="target", metavar="FAMILY", required=True)
    for area in AREAS:  # an area that fails to import is an error, never a missing command
        importlib.import_module(area).register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harstream`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # JAX reports at INFO that it found no TPU/GPU plugin; on a CPU machine that is noise.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
