"""Training on several processes (and machines) started by torchrun: data-parallel with a global batch.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts; with WORLD_SIZE above 1, `setup` joins the
process group (gloo on CPU, nccl on CUDA, one GPU per process: LOCAL_RANK's) and training is data-parallel:

- `--batch-size` is the GLOBAL batch. Every process draws the same shuffled order from the epoch's seed (as a
  single process would), takes each global batch, augments it with the epoch's generator, and keeps every
  WORLD_SIZE-th image of it, starting at its RANK. The gradients are averaged by DistributedDataParallel with the
  loss weighted by each share's size, so a step is the step of a single process on the whole global batch: the
  results equal a single-process run up to the order of float additions. (torch's DistributedSampler is not used:
  it pads the last batch with repeated images, which a single process would not see.) A batch size that the number
  of processes does not divide is refused. Batch norm and dropout work on each process's share, as usual for
  data-parallel training; networks without them match a single process.
- Only the main process (rank 0) writes: the staging folder, the per-epoch checkpoints, the run folder, logs and
  progress. The others wait for it. On resume the main process reads the checkpoint and sends its bytes to all the
  others, so only rank 0's machine needs the output folder (every machine needs the input run and the dataset).
- Validation is split over the processes and its sums are all-reduced; the final test metrics of the run folder are
  measured by the main process and sent to the others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from structprune.errors import StructpruneError
from structprune.output import Output

log = logging.getLogger(__name__)

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise StructpruneError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def is_main_process() -> bool:
    """True for a single process and for rank 0 under torchrun: the process that writes and prints."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def local_batch_size(batch_size: int, world: int | None = None) -> int:
    """Each process's share of the global `batch_size`; a world size that does not divide it is refused."""
    world = world_size() if world is None else world
    if batch_size % world:
        raise StructpruneError(f"--batch-size {batch_size} is the global batch and must split evenly over the {world} "
                               f"processes (use a multiple of {world})")
    return batch_size // world


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel group that `setup` has joined."""

    rank: int
    world: int
    local_rank: int
    device: torch.device  # where this process trains, and where its collectives' tensors live

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a batch: every `world`-th one, starting at `rank`."""
        return x[self.rank :: self.world]

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (it shares the parameters: masks and optimizer act on `model`)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_sum(self, values: list[float]) -> list[float]:
        """The sums of `values` over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """The main process's `data` on every process (the others pass None)."""
        size = torch.tensor([len(data) if self.is_main and data is not None else 0], dtype=torch.int64,
                            device=self.device)
        dist.broadcast(size, src=0)
        n = int(size.item())
        if self.is_main:
            buffer = torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8)[:n].to(self.device)
        else:
            buffer = torch.empty(n, dtype=torch.uint8, device=self.device)
        if n:
            dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().numpy().tobytes()) if n else b""

    def broadcast_json(self, value: Any) -> Any:
        """The main process's JSON-able `value` on every process."""
        return json.loads(self.broadcast_bytes(json.dumps(value).encode() if self.is_main else None) or b"null")


def setup(device: torch.device, batch_size: int) -> tuple[Group | None, torch.device]:
    """Under torchrun with more than one process: check that `batch_size` splits over them, join the process group
    (once) and return it with this process's device (CUDA: the GPU of LOCAL_RANK). A single process gets
    (None, `device`)."""
    world = world_size()
    if world == 1:
        return None, device
    local_batch_size(batch_size, world)  # every process refuses on its own, before it waits for the others
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise StructpruneError(f"process {rank}: LOCAL_RANK {local_rank} but this machine has "
                                   f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise StructpruneError("torchrun started several processes, but this PyTorch has no torch.distributed")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        log.debug("process %d of %d joined the %s process group", rank, world, backend)
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device), device


def on_main(group: Group | None, work: Callable[[], T]) -> T:
    """Run `work` on the main process only and give its JSON-able result to every process; a StructpruneError it
    raises is raised on every process (the others wait meanwhile)."""
    if group is None:
        return work()
    if group.is_main:
        try:
            result = work()
        except StructpruneError as exc:
            group.broadcast_json({"error": str(exc)})
            raise
        except BaseException as exc:
            group.broadcast_json({"error": f"the main process failed ({type(exc).__name__}: {exc})"})
            raise
        group.broadcast_json({"value": result})
        return result
    outcome = group.broadcast_json(None)
    if "error" in outcome:
        raise StructpruneError(outcome["error"])
    return outcome["value"]  # type: ignore[no-any-return]


@contextmanager
def staged(group: Group | None, output: Output, identity: dict[str, Any], restart: bool = False) -> Iterator[None]:
    """`output.staged(identity, restart)` on the main process (the staging folder exists there only); a refusal is
    raised on every process."""
    with ExitStack() as stack:
        def enter() -> None:
            stack.enter_context(output.staged(identity, restart=restart))

        on_main(group, enter)
        yield
