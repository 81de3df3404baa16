"""Hydra callbacks: the sweep summary, comparison and effects written when a multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """On ``on_multirun_end``: write summary.*, compare.* and effects.* (``sweeps.finish``), and
    fail the sweep if a job failed.

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
        from .sweeps import finish_sweep

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        end = finish_sweep(sweep_dir)
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(end.jobs))
        if end.comparisons:
            log.info(
                "comparison with the baseline (%s):\n%s", sweep_dir / "compare.md", end.compare_text
            )
        if end.effects.grid.factors:  # a grid, or a line saying why these runs are none
            log.info("effects per factor (%s):\n%s", sweep_dir / "effects.md", end.effects_text)
        from .closing import sweep_next_steps

        task = [str(o) for o in config.hydra.overrides.task]
        grid = bool(end.effects.rows)
        log.info("%s", sweep_next_steps(sweep_dir, grid, end.failed, task))
        if end.failed:
            # SystemExit, not an exception: Hydra turns callback exceptions into warnings
            raise SystemExit(
                f"{len(end.failed)} of {len(end.jobs)} sweep job(s) failed: "
                f"{', '.join(end.failed)} (see {sweep_dir / 'summary.md'})"
            )
