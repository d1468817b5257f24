"""The `nightingale` command: one verb per user-facing job, each calling the library.

Each verb lives in its own module with `register(subparsers)`, which adds the verb's arguments and
sets `func(args) -> int` (the exit code). The Hydra stage scripts call the same library functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that define verbs; imported lazily so `nightingale --help` stays fast.
COMMAND_MODULES = (
    "nightingale.data.simulator.command",
    "nightingale.data.validate_command",
    "nightingale.data.omop.command",
    "nightingale.inference.population.command",
    "nightingale.federated.command",
    "nightingale.cluster.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightingale", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
