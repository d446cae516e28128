"""`structprune retrain` under torchrun (2 processes, gloo on CPU): the result of a single process with the same
global batch, masks held, a killed run resumed, a batch the processes cannot share refused."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from structprune import models
from structprune.cli import main
from structprune.metrics import size_metrics
from structprune.runfolder import load_run, save_run
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.selection import channel_groups_of
from structprune.stages.prune import load_masks

pytestmark = [pytest.mark.slow,  # each torchrun start imports torch in three processes
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available")]

REPO = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
for _name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)
# 1,345 training images (152 of digits' 1,497 held out for validation): with a global batch of 64 the last batch holds
# one image, so the second process's share of it is empty.
VAL_SIZE = 152
RETRAIN = ["--epochs", "2", "--batch-size", "64", "--no-progress"]
# Both runs see the same images in the same order at every step; only the order of float additions differs (each
# process sums its half of the batch, then the halves are averaged). Over 44 steps that moves the weights by ~1e-7.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5  # relative


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
            "-m", "structprune", *args]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """An untrained seeded tiny-paper run on digits, pruned by L1 norm, and retrained by one process ('single')."""
    folder = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    model = models.create("tiny-paper", in_channels=1, input_size=8)
    save_run(folder / "base", model, None, size_metrics(model),
             {"dataset": "digits", "val_size": VAL_SIZE, "train": {"seed": 0}})
    assert main(["prune", str(folder / "base"), "--granularity", "channel,intra", "--ratio", "0.5,0.55",
                 "--method", "l1", "--intra-free", "--round-to", "1", "--out", str(folder / "pruned")]) == 0
    assert main(["retrain", str(folder / "pruned"), *RETRAIN, "--out", str(folder / "single")]) == 0
    return folder


@pytest.fixture(scope="module")
def two(runs) -> Path:
    """The same retraining on two processes."""
    done = _run(_torchrun("retrain", str(runs / "pruned"), *RETRAIN, "--out", str(runs / "two")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test MCR") == 1  # the main process alone reports
    return runs / "two"


def _history(run: Path) -> list[dict[str, float]]:
    return json.loads((run / "metrics.json").read_text())["history"]


def test_two_processes_end_where_one_process_does_with_the_same_global_batch(runs, two):
    one, both = load_file(str(runs / "single" / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert one.keys() == both.keys()
    for name in one:
        assert torch.allclose(one[name], both[name], rtol=0, atol=WEIGHT_TOLERANCE), name
    trained = load_file(str(runs / "pruned" / "model.safetensors"))
    assert any(not torch.equal(trained[name], both[name]) for name in both)  # it did train
    for a, b in zip(_history(runs / "single"), _history(two), strict=True):
        assert a["val_mcr"] == b["val_mcr"]
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_TOLERANCE), key
    config = json.loads((two / "config.json").read_text())
    assert config["retrain"]["processes"] == 2 and config["retrain"]["batch_size"] == 64


def test_pruned_weights_stay_exactly_zero_on_two_processes(two):
    run = load_run(two)
    mask = load_masks(run)
    assert mask is not None
    factors = MaskApplier(run.model, channel_groups_of(run.model)).factors(mask)
    params = dict(run.model.named_parameters())
    assert factors
    for name, factor in factors.items():
        assert bool((params[name].detach()[factor == 0] == 0).all()), name
        assert bool((params[name].detach()[factor != 0] != 0).any()), name


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(runs, two):
    out = runs / "killed"
    checkpoint = runs / ".killed.structprune" / "checkpoints" / "checkpoint.safetensors"
    command = _torchrun("retrain", str(runs / "pruned"), *RETRAIN, "--out", str(out))
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        pids = _descendants(proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(pids) >= 3  # torchrun and its two workers
    assert not out.exists(), "killed after it finished: nothing to resume"
    done = _run(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after epoch" in done.stderr  # it resumed from the checkpoint rather than starting over
    resumed, reference = load_file(str(out / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
    assert _history(out) == _history(two)
    assert not checkpoint.parent.parent.exists()


def test_a_batch_the_processes_cannot_share_evenly_is_refused_in_one_line(runs):
    done = _run(_torchrun("retrain", str(runs / "pruned"), "--epochs", "1", "--batch-size", "63", "--out",
                          str(runs / "odd")))
    assert done.returncode != 0
    # every process refuses; torchrun may stop the second before it prints, and the two lines may run together
    ours = re.findall(r"structprune: error: (.*?)(?=structprune: error: |\n|$)", done.stderr)
    assert ours, done.stderr[-3000:]
    assert set(ours) == {"--batch-size 63 is the global batch and must split evenly over the 2 processes (use a "
                         "multiple of 2)"}
    assert f'File "{REPO / "structprune"}' not in done.stderr  # no traceback of ours (torchrun prints its own)
    assert not (runs / "odd").exists() and not (runs / ".odd.structprune").exists()
