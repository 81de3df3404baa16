"""The ``Sweeper`` Hydra finds: it launches the listed jobs as one batch through the configured
launcher, so that a parallel launcher runs them side by side.

Hydra's basic sweeper only sweeps cartesian products (``a=1,2 b=x,y``), and its overrides name
values, not jobs; a list of jobs (three cells of a 2x3 grid, each with the seeds it lacks) needs
a sweeper of its own, and Hydra ships none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .config import JobsSweeperConf  # noqa: F401  (registers hydra/sweeper=jobs)


def read_jobs(jobs: Sequence[Sequence[str]], jobs_file: str | None) -> list[list[str]]:
    """The jobs of ``jobs`` then of ``jobs_file``: each a list of override strings."""
    listed = [list(map(str, job)) for job in jobs or []]
    if jobs_file:
        path = Path(jobs_file)
        if not path.is_file():
            raise FileNotFoundError(f"hydra.sweeper.jobs_file={jobs_file}: no such file")
        loaded = yaml.safe_load(path.read_text()) or []
        if not isinstance(loaded, list) or not all(isinstance(j, list) for j in loaded):
            raise ValueError(
                f"hydra.sweeper.jobs_file={jobs_file}: expected a YAML list of jobs, each a list "
                "of overrides ([[a=1, b=x], [a=2]])"
            )
        listed += [list(map(str, job)) for job in loaded]
    return listed


class JobsSweeper(Sweeper):
    def __init__(
        self,
        jobs: Sequence[Sequence[str]] | None = None,
        jobs_file: str | None = None,
        first_job_num: int = 0,
        params: Any = None,
    ) -> None:
        self.jobs, self.jobs_file, self.first_job_num = jobs or [], jobs_file, int(first_job_num)
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Sequence[JobReturn]:
        """The command line's overrides go into every job, before the job's own."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        swept = [o.input_line for o in parser.parse_overrides(arguments) if o.is_sweep_override()]
        if swept:
            raise ValueError(
                f"hydra/sweeper=jobs runs the jobs it lists; the command line sweeps "
                f"{', '.join(swept)}: list those jobs in hydra.sweeper.jobs(_file) instead"
            )
        batch = [[*arguments, *job] for job in read_jobs(self.jobs, self.jobs_file)]
        if not batch:
            raise ValueError("hydra/sweeper=jobs: no jobs (hydra.sweeper.jobs and jobs_file empty)")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.validate_batch_is_legal(batch)  # a typo fails here, before any job starts
        results = self.launcher.launch(batch, initial_job_idx=self.first_job_num)
        for result in results:
            _ = result.return_value  # as Hydra's basic sweeper: a failed job raises, at the end
        return results
