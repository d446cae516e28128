"""Command-line interface: `structprune VERB ...`. Each verb lives in its own module here.

A verb module defines `add_parser(subparsers)`, which registers its sub-parser and sets
`func=run` with `run(args) -> int`. The library never prints; this package is the only place that does.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from structprune import __version__
from structprune.distributed import is_main_process
from structprune.errors import StructpruneError

# Verb modules, in the order `--help` lists them. Add a verb by adding its module name here.
VERBS = (
    "train",
    "eval",
    "info",
    "demo",
    "quantize",
    "export",
    "prune",
    "compact",
    "retrain",
    "bench",
    "report",
    "sensitivity",
    "reproduce",
)


class UsageError(StructpruneError):
    """A command line argparse refuses (unknown option, bad value, missing argument)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a parse error is a UsageError, which `main` prints as every other bad input: one line,
    `structprune: error: VERB: message (see ...)`, exit status 2 (argparse's own form is the usage block and the
    message on two or more lines, raised as SystemExit). --help and --version still exit 0 through SystemExit."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.partition(" ")[2]
        where = f"{verb}: " if verb else ""
        raise UsageError(f"{where}{' '.join(message.split())} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="structprune",
        description="Structured pruning of convolutional networks: prune, search, compact, quantize, measure.",
    )
    parser.add_argument("--version", action="version", version=f"structprune {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for verb in VERBS:
        importlib.import_module(f"structprune.cli.{verb.replace('-', '_')}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"structprune: error: {exc}", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet or not is_main_process() else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except StructpruneError as exc:
        print(f"structprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("structprune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
