"""Hydra callbacks: the sweep summary and comparison written when a multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .metrics import Status

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """On ``on_multirun_end``: write summary.* and compare.*, and fail the sweep if a job failed.

    Jobs catch their own errors in multirun (so one failure does not stop an ablation), which means
    the sweep's exit status has to come from here. With ``logger=mlflow``, the sweep's MLflow
    parent run is opened before the first job and gets the summary and comparison at the end.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The sweep's MLflow experiment and parent run, before any job (``tracking``)."""
        from .config import MlflowLogger, node
        from .tracking.sweep import open_sweep

        settings = node(MlflowLogger, config.logger.mlflow, "logger.mlflow")
        if settings.enabled:
            overrides = [str(o) for o in config.hydra.overrides.task]
            open_sweep(settings, Path(config.hydra.sweep.dir), overrides)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarize ``hydra.sweep.dir``; exit 1 naming the failed jobs, if any."""
        from .runs import find_runs, write_compare, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs = find_runs(sweep_dir)  # read once for the summary, the comparison and MLflow
        rows = write_summary(sweep_dir, runs=runs)
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(rows))
        comparisons, text = write_compare([sweep_dir], sweep_dir, runs=runs)
        if comparisons:
            log.info("comparison with the baseline (%s):\n%s", sweep_dir / "compare.md", text)
        failed = [r["job"] for r in rows if r["status"] != Status.ok]
        from .tracking.sweep import log_sweep

        log_sweep(sweep_dir, runs, comparisons, len(failed))
        if failed:
            # SystemExit, not an exception: Hydra turns callback exceptions into warnings
            raise SystemExit(
                f"{len(failed)} of {len(rows)} sweep job(s) failed: {', '.join(failed)} "
                f"(see {sweep_dir / 'summary.md'})"
            )
