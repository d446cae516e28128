"""Reports: run folders read into records (collect), drawn (plots) and written as HTML or Markdown (render)."""

from structprune.report.collect import RunRecord, collect, find_runs, read_run
from structprune.report.render import write_report

__all__ = ["RunRecord", "collect", "find_runs", "read_run", "write_report"]
