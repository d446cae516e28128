"""`structprune bench`: median latency of run folders' networks, measured together in one process."""

from __future__ import annotations

import argparse
from pathlib import Path

from structprune.bench import DEFAULT_RUNTIME, REFERENCES, RUNTIMES
from structprune.cli.common import MAX_THREADS, int_in, int_list, name_list, positive_float, positive_int
from structprune.errors import StructpruneError
from structprune.export_int8 import DEFAULT_CALIBRATION_IMAGES
from structprune.jsonio import write_json_atomic
from structprune.layer_bench import compare_layers
from structprune.output import claim_file
from structprune.runcheck import load_checked_run
from structprune.stages.measure import BenchConfig, bench_runs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the networks of run folders side by side",
        description="Time each run's network (exported to ONNX Runtime unless --runtime says otherwise) after "
        "warm-up, all in one process, interleaved over rounds; report the median of the faster memory layout (NCHW "
        "or channels_last in PyTorch), its spread over rounds, and ratios against the first run. Random inputs; "
        "weights as saved. glibc's default allocator may page-fault large activations (always those above 32 MB) "
        "afresh on every call; run with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 in the environment for "
        "steadier timings (docs/benchmarks.md).",
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="DIR", help="run folders; the first is the baseline of the ratios")
    p.add_argument("--batch", type=int_list, default=[1, 64], help="batch sizes, e.g. 1,64 (default)")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=2)
    p.add_argument("--rounds", type=positive_int, default=7, help="timing rounds per network (median taken)")
    p.add_argument("--sample-seconds", type=positive_float, default=0.1, help="time per network per round (default 0.1)")
    p.add_argument("--reference", type=name_list(REFERENCES, "name"), default=[], metavar="NAMES",
                   help=f"reference rows for pruned or compact runs, comma-separated: {', '.join(REFERENCES)} "
                   "(masked-dense: the masked network with dense tensors; unstructured: its nonzeros as CSR convs)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (robust on a busy machine with --threads 1)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help=f"run each network exported to ONNX Runtime (default: {DEFAULT_RUNTIME}, the runtime to deploy "
                   "with, see structprune export), in eager PyTorch, or through torch.compile (Inductor, frozen "
                   "weights, channels_last; needs a C++ compiler); unstructured reference rows and --per-layer stay "
                   "eager")
    p.add_argument("--onnx-stop-spinning", action="store_true",
                   help="with --runtime onnxruntime: the sessions' threads stop busy-waiting at the end of every run, "
                   "so each run pays for waking them (an occasional request); default: ONNX Runtime's own spinning, "
                   "as for back-to-back requests")
    p.add_argument("--int8", action="store_true",
                   help="with --runtime onnxruntime: also time each run's network statically quantized to int8 by ONNX "
                   "Runtime (as structprune export --int8 writes it), in a row named DIR#int8")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help=f"with --int8: training images of each run's dataset that calibrate its activation ranges "
                   f"(default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--data-dir", default=None, help="with --int8: dataset folder (default: the one each run recorded)")
    p.add_argument("--per-layer", action="store_true",
                   help="with two runs: time every layer of the first beside the same-named layer of the second and "
                   "report each layer's MAC ratio, latency ratio and efficiency (eager PyTorch)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the records here (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "?"


def _fraction(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "?"


def run(args: argparse.Namespace) -> int:
    references = args.reference
    if args.json is not None:
        claim_file(args.json, inputs=args.runs, overwrite=args.overwrite)
    if args.per_layer:
        return _per_layer(args, references)
    cfg = BenchConfig(batches=tuple(args.batch), threads=args.threads, rounds=args.rounds,
                      sample_seconds=args.sample_seconds, clock=args.clock, runtime=args.runtime or DEFAULT_RUNTIME,
                      references=tuple(references), int8_images=_int8_options(args), data_dir=args.data_dir,
                      onnx_stop_spinning=args.onnx_stop_spinning)
    records = bench_runs(args.runs, cfg, out_json=args.json, progress=not args.no_progress)
    width = max(len(rec["run"]) for rec in records)
    print(f"{'run':<{width}}  batch  median ms  IQR ms   min ms   max ms  speedup  MAC ratio  efficiency  layout"
          "          MACs")
    for rec in records:
        macs = f"{rec['macs']:,}" if rec["macs"] is not None else "?"
        print(f"{rec['run']:<{width}}  {rec['batch']:>5}  {rec['median_ms']:>9.3f}  {rec['iqr_ms']:>6.3f}  "
              f"{rec['min_ms']:>7.3f}  {rec['max_ms']:>7.3f}  {_ratio(rec['speedup_vs_first']):>7}  "
              f"{_ratio(rec['mac_ratio_vs_first']):>9}  {_fraction(rec['efficiency_vs_first']):>10}  "
              f"{rec['memory_format']:<13}  {macs}")
    print(f"speedup and MAC ratio: {records[0]['run']} at the same batch / each row (above 1: faster, fewer MACs); "
          "efficiency: speedup / MAC ratio")
    return 0


def _int8_options(args: argparse.Namespace) -> int | None:
    """The number of calibration images with --int8 (None without it), after checking the options that go with it."""
    if not args.int8:
        if args.calibration_images is not None or args.data_dir is not None:
            raise StructpruneError("--calibration-images and --data-dir apply to --int8 only")
        return None
    if (args.runtime or DEFAULT_RUNTIME) != "onnxruntime":
        raise StructpruneError(f"--int8 times ONNX Runtime's int8 models: drop --runtime {args.runtime}")
    count = DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    if count < 1:
        raise StructpruneError(f"--calibration-images must be at least 1 (got {count})")
    return count


def _per_layer(args: argparse.Namespace, references: list[str]) -> int:
    if len(args.runs) != 2:
        raise StructpruneError(f"--per-layer compares two runs (a reference, then its pruned or compact form), "
                               f"not {len(args.runs)}")
    if references or args.runtime not in (None, "eager") or args.int8:
        raise StructpruneError("--per-layer times eager PyTorch layers; it takes no --reference, --runtime or --int8")
    first, second = (load_checked_run(path) for path in args.runs)
    records = compare_layers(first.model, second.model, args.batch, threads=args.threads, rounds=args.rounds,
                             sample_seconds=args.sample_seconds, clock=args.clock, progress=not args.no_progress)
    if args.json is not None:
        write_json_atomic(args.json, records)
    width = max(len(r["layer"]) for r in records)
    print(f"{'layer':<{width}}  {'type':<18}  batch  first ms  second ms  speedup  MAC ratio  efficiency  kernels")
    for r in records:
        mac = f"{r['mac_ratio']:.2f}x" if r["mac_ratio"] else "-"
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] else "-"
        print(f"{r['layer']:<{width}}  {r['other_type']:<18}  {r['batch']:>5}  {r['reference_ms']:>8.3f}  "
              f"{r['other_ms']:>9.3f}  {r['latency_ratio']:>6.2f}x  {mac:>9}  {eff:>10}  {r['other_kernels'] or '-'}")
    print(f"speedup and MAC ratio: {args.runs[0]} / {args.runs[1]}, layer by layer; efficiency = speedup / MAC ratio")
    return 0
