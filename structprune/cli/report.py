"""`structprune report DIR... --out FILE.html|FILE.md`: tables and plots of run folders."""

from __future__ import annotations

import argparse

from structprune.cli.common import existing_file, suffixed_path
from structprune.output import claim_file

REPORT_FILE = suffixed_path(".html", ".htm", ".md")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables and plots of run folders as one HTML page (or Markdown)",
        description="Collect run folders (or folders containing them) into a report: metrics, MCR against "
        "pruning ratio, kept fraction per layer, search history, latency against MCR, storage, sensitivity.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, or folders holding run folders")
    p.add_argument("--out", required=True, type=REPORT_FILE, metavar="FILE", help="report.html (self-contained) or report.md")
    p.add_argument("--markdown", type=REPORT_FILE, metavar="FILE", help="also write a Markdown version (PNGs beside it)")
    p.add_argument("--bench", action="append", type=existing_file, default=[], metavar="FILE",
                   help="bench JSON file(s) from `structprune bench --json` (repeatable); a bench.json directly "
                   "inside a DIR that holds runs is read without it")
    p.add_argument("--title", default="structprune report")
    p.add_argument("--overwrite", action="store_true", help="replace the report file(s) if they exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from structprune.stages.measure import report_runs

    outs = [target for target in (args.out, args.markdown) if target]
    for target in outs:
        claim_file(target, overwrite=args.overwrite)
    count, written = report_runs(args.dirs, outs, args.title, args.bench)
    print(f"report of {count} run(s): {written[0]}")
    if args.markdown:
        print(f"markdown: {args.markdown}")
    return 0
