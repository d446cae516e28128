"""Argument types shared by the verbs: strings are parsed into typed values here, once.

Every type raises argparse.ArgumentTypeError with a short reason; the parser turns it into one line,
`structprune: error: argument --x: <reason>`, and exit status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

from structprune.errors import StructpruneError
from structprune.sparsity.method import Method

MAX_THREADS = 1024  # --threads
SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take seeds in 0..2**32-1 without surprises


def _int_at_least(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most {high}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        return _int_at_least(text, low, high)

    parse.__name__ = f"integer in {low}..{high}"
    return parse


def seed(text: str) -> int:
    """A random seed: an integer in 0..2**32-1."""
    return _int_at_least(text, 0, SEED_MAX)


def int_list(text: str) -> list[int]:
    """'1,64' -> [1, 64]"""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
    return values


def finite_float(text: str) -> float:
    """A finite number (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0")
    return value


def float_below(high: float) -> Callable[[str], float]:
    """A finite number in [0, high)."""

    def parse(text: str) -> float:
        value = non_negative_float(text)
        if not value < high:
            raise argparse.ArgumentTypeError(f"{text!r} must be in [0, {high:g})")
        return value

    parse.__name__ = f"number in [0, {high:g})"
    return parse


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def name_in(names: Sequence[str], what: str) -> Callable[[str], str]:
    """One of `names` ('unknown WHAT 'x'; available: ...' otherwise): an enum whose message names the choices."""

    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; available: {', '.join(names)}")
        return text

    parse.__name__ = what
    return parse


def name_list(names: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """A comma-separated list of distinct `names` (may be empty)."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        for value in values:
            if value not in names:
                raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose from {', '.join(names)}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} names a {what} twice")
        return values

    parse.__name__ = f"{what} list"
    return parse


def layer_list(text: str) -> tuple[str, ...]:
    """'features.0,features.2' -> ('features.0', 'features.2'); checked against the model later."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no layer")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a layer twice")
    return names


def from_library(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    """An argparse type from a library parser that raises StructpruneError."""

    def wrapped(text: str) -> object:
        try:
            return parse(text)
        except StructpruneError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = what
    return wrapped


def enum_choice(enum: type[StrEnum], what: str) -> Callable[[str], StrEnum]:
    """An argparse type: one of the values of a StrEnum (e.g. Granularity, KernelStructure), as that member."""

    def parse(text: str) -> StrEnum:
        try:
            return enum(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from "
                                             f"{', '.join(m.value for m in enum)}") from None

    parse.__name__ = what
    return parse


def method_choice(allowed: Sequence[Method], what: str = "method") -> Callable[[str], Method]:
    """An argparse type: one of the `allowed` pruning methods, spelt as in JSON (e.g. 'random-best')."""

    def parse(text: str) -> Method:
        try:
            return Method.parse(text, allowed, what)
        except StructpruneError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


def method_metavar(allowed: Sequence[Method]) -> str:
    return "{" + ",".join(m.value for m in allowed) + "}"


def existing_file(text: str) -> Path:
    """A path that names an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    return path


def suffixed_path(*suffixes: str) -> Callable[[str], Path]:
    """A path ending in one of `suffixes` (compared in lower case)."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: file must end in {' or '.join(suffixes)}")
        return path

    parse.__name__ = "file name"
    return parse
def add_output_arguments(p: argparse.ArgumentParser, what: str, resumable: bool = False, required: bool = True) -> None:
    """--out (a new folder), --overwrite, and for resumable verbs --restart."""
    p.add_argument("--out", required=required, type=Path, metavar="DIR",
                   help=f"{what} to write: a new (or empty) folder; an existing one is never replaced without --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it holds an earlier output of this same verb (and nothing else)")
    if resumable:
        p.add_argument("--restart", action="store_true",
                       help="discard what an interrupted run of this command left in its staging folder and start over")
