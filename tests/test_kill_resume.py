"""SIGKILL at random points of train, a particle-filter search and reproduce (at least 4 + 3 + 3 kills):
rerunning the same command ends bit-identical to a run that was never interrupted, and leaves no staging folder
behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RESULT_FILES = ("model.safetensors", "masks.json", "arch.json")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "structprune", *args]


def _run(args: list[str], cwd: Path) -> float:
    """Run to the end; the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(_command(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - started


def _kill_at(args: list[str], cwd: Path, delay: float) -> bool:
    """Start the command and SIGKILL it after `delay` seconds; False if it finished first."""
    proc = subprocess.Popen(_command(*args), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _results(folder: Path) -> dict[str, bytes]:
    """The bytes that define a result: weights, masks and structure of every run folder below `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.name in RESULT_FILES and ".structprune" not in str(p)}


def _killed_then_finished(args: list[str], cwd: Path, rng: random.Random, attempts: int, seconds: float,
                          within: float = 0.6) -> int:
    """Kill the command up to `attempts` times, each at a random point of the first `within` of `seconds` (what an
    uninterrupted run takes; a resumed one still pays its start-up), then run it to the end; the kills that landed
    before the output was complete."""
    out = cwd / args[args.index("--out") + 1]
    kills = 0
    for _ in range(attempts):
        if not _kill_at(args, cwd, rng.uniform(1.0, within * seconds)):
            return kills  # finished before the kill: it is complete
        if (out / "config.json").is_file() and args[0] != "reproduce":
            return kills  # killed after its output was published: complete (a rerun is refused without --overwrite)
        kills += 1
    _run(args, cwd)
    return kills


def _staging_left(cwd: Path) -> list[str]:
    return [str(p) for p in cwd.rglob("*.structprune")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill")


TRAIN = ["train", "--model", "tiny-paper", "--data", "digits", "--epochs", "8", "--val-size", "100", "--threads", "1",
         "--no-progress"]


@pytest.mark.slow
def test_killed_training_resumes_bit_identical(work):
    seconds = _run([*TRAIN, "--out", "train-ref"], work)
    kills = _killed_then_finished([*TRAIN, "--out", "train-killed"], work, random.Random(1), 6, seconds)
    assert kills >= 4, f"only {kills} kills landed ({seconds:.1f} s uninterrupted)"
    assert _results(work / "train-killed") == _results(work / "train-ref")
    assert not _staging_left(work)


@pytest.mark.slow
def test_killed_search_resumes_bit_identical(work):
    if not (work / "train-ref").is_dir():
        _run([*TRAIN, "--out", "train-ref"], work)
    search = ["prune", "train-ref", "--method", "pf", "--granularity", "channel,intra", "--ratio", "0.5",
              "--particles", "4", "--generations", "3", "--retrain-epochs", "1", "--final-epochs", "1",
              "--score-images", "50", "--check-images", "50"]
    seconds = _run([*search, "--out", "pf-ref"], work)
    kills = _killed_then_finished([*search, "--out", "pf-killed"], work, random.Random(2), 5, seconds)
    assert kills >= 3, f"only {kills} kills landed ({seconds:.1f} s uninterrupted)"
    assert _results(work / "pf-killed") == _results(work / "pf-ref")
    assert (work / "pf-killed" / "search.json").read_bytes() == (work / "pf-ref" / "search.json").read_bytes()
    assert not _staging_left(work)


@pytest.mark.slow
def test_killed_reproduction_resumes_bit_identical(work):
    repro = ["reproduce", "digits", "--quick", "--no-progress"]
    seconds = _run([*repro, "--out", "repro-ref"], work)
    kills = _killed_then_finished([*repro, "--out", "repro-killed"], work, random.Random(3), 5, seconds, within=0.3)
    assert kills >= 3, f"only {kills} kills landed ({seconds:.1f} s uninterrupted)"
    reference, resumed = _results(work / "repro-ref"), _results(work / "repro-killed")
    assert set(reference) == set(resumed) and len(reference) >= 15
    assert resumed == reference
    assert not _staging_left(work)
