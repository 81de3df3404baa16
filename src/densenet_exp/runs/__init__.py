"""Run-directory tools (``python -m densenet_exp.runs``): summarize, compare, effects, diff; they
read run folders (``rerun`` and ``extend``, which launch jobs, are in ``sweeps``)."""

from .compare import Comparison, compare
from .configs import Configuration, configurations
from .diff import diff_runs, format_diff, merge_overrides
from .effects import Effects, effects
from .records import Run, find_runs, flatten, load_run
from .report import write_compare, write_effects, write_summary
from .table import summary_rows

__all__ = [
    "Comparison",
    "Configuration",
    "Effects",
    "Run",
    "compare",
    "configurations",
    "diff_runs",
    "effects",
    "find_runs",
    "flatten",
    "format_diff",
    "load_run",
    "merge_overrides",
    "summary_rows",
    "write_compare",
    "write_effects",
    "write_summary",
]
