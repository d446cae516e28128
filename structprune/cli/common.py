"""Argument types shared by the verbs: strings are parsed into typed values here, once."""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def int_list(text: str) -> list[int]:
    """'1,64' -> [1, 64]"""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return values


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def add_output_arguments(p: argparse.ArgumentParser, what: str, resumable: bool = False, required: bool = True) -> None:
    """--out (a new folder), --overwrite, and for resumable verbs --restart."""
    p.add_argument("--out", required=required, type=Path, metavar="DIR",
                   help=f"{what} to write: a new (or empty) folder; an existing one is never replaced without --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it holds an earlier output of this same verb (and nothing else)")
    if resumable:
        p.add_argument("--restart", action="store_true",
                       help="discard what an interrupted run of this command left in its staging folder and start over")
