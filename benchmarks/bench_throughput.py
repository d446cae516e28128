"""Training and inference throughput (images/s) of every zoo model at batch 64 on this machine.

Models are measured round-robin (every model once per round, for several rounds) so that load from
other processes hits all of them alike; the table reports the median over rounds and the spread.
Run under the shared lock on a busy machine:

    flock /tmp/structprune-heavy.lock .venv/bin/python benchmarks/bench_throughput.py --out runs/bench-throughput.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer
from tqdm import tqdm

from structprune.jsonio import write_json_atomic
from structprune.metrics import count_macs, count_params
from structprune.models import create

MODELS = ["paper-mnist", "paper-cifar10", "vgg11", "vgg16", "resnet20", "resnet56", "mobilenetv2", "densenet"]


def make_steps(name: str, batch: int, channels_last: bool):
    """(model, inference step, training step) for one model on random data of its input shape."""
    shape = (1, 28, 28) if name == "paper-mnist" else (3, 32, 32)
    torch.manual_seed(0)
    model = create(name, in_channels=shape[0], input_size=shape[1])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, infer, train_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--layout", choices=("channels_last", "contiguous", "both"), default="channels_last",
                   help="memory format of inputs and weights; 'both' measures each model in both, interleaved")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    layouts = ["channels_last", "contiguous"] if args.layout == "both" else [args.layout]
    names = [(n, lay) for n in args.models.split(",") if n for lay in layouts]
    steps = {key: make_steps(key[0], args.batch, key[1] == "channels_last") for key in names}
    times: dict[tuple[str, str], dict[str, list[float]]] = {key: {"infer": [], "train": []} for key in names}
    for _, infer, train_step in steps.values():  # warm-up: oneDNN primitive creation, allocator
        infer()
        train_step()
    for _ in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
        for name, (_, infer, train_step) in steps.items():
            for kind, fn in (("infer", infer), ("train", train_step)):
                timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads)
                times[name][kind].append(timer.timeit(2).median)
    rows = []
    for (name, layout), (model, _, _) in steps.items():
        row = {"model": name, "layout": layout, "params": count_params(model), "macs": count_macs(model)}
        for kind in ("infer", "train"):
            ips = [args.batch / t for t in times[(name, layout)][kind]]
            row[f"{kind}_images_per_s"] = statistics.median(ips)
            row[f"{kind}_min"], row[f"{kind}_max"] = min(ips), max(ips)
        rows.append(row)
    result = {"batch": args.batch, "threads": args.threads, "layout": args.layout, "rounds": args.rounds,
              "torch": torch.__version__, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, result)
    print(f"batch {args.batch}, {args.threads} threads, {args.layout}, median of {args.rounds} rounds (min–max)")
    print("| model | layout | params | MACs/image | inference img/s | training img/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['layout']} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | {r['infer_images_per_s']:.0f} "
              f"({r['infer_min']:.0f}–{r['infer_max']:.0f}) | {r['train_images_per_s']:.0f} "
              f"({r['train_min']:.0f}–{r['train_max']:.0f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
