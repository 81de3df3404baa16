"""A sweep's end, for the sweep callback and for ``runs extend`` alike: its runs read once, the
summary, the comparison and the effects written, and the sweep's MLflow parent run told."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metrics import Status
from ..runs.compare import Options
from ..runs.effects import Effects
from ..runs.records import find_runs
from ..runs.report import write_compare, write_effects, write_summary
from ..tracking.sweep import log_sweep


@dataclass
class SweepEnd:
    jobs: list[dict[str, Any]]  # the summary's per-job rows
    comparisons: list[dict[str, Any]]
    compare_text: str
    effects: Effects
    effects_text: str

    @property
    def failed(self) -> list[str]:
        return [j["job"] for j in self.jobs if j["status"] != Status.ok]


def finish_sweep(sweep: Path, plot: bool = True, options: Options | None = None) -> SweepEnd:
    """Write summary.*, compare.* and (for a grid of two or more factors) effects.* into the
    sweep folder, and log them to the sweep's MLflow parent run where it has one."""
    runs = find_runs(sweep)  # read once for every report and MLflow
    jobs = write_summary(sweep, plot=plot, runs=runs)
    comparisons, compare_text = write_compare([sweep], sweep, plot=plot, options=options, runs=runs)
    result, effects_text = write_effects([sweep], sweep, plot=plot, options=options, runs=runs)
    end = SweepEnd(jobs, comparisons, compare_text, result, effects_text)
    log_sweep(sweep, runs, comparisons, result, len(end.failed))
    return end
