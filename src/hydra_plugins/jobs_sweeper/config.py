"""The sweeper's settings (``hydra.sweeper.*``), registered as ``hydra/sweeper=jobs``."""

# (no ``from __future__ import annotations``: Hydra runs plugin modules before registering them in
# sys.modules, and dataclasses then cannot resolve string annotations)
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class JobsSweeperConf:
    _target_: str = "hydra_plugins.jobs_sweeper.jobs_sweeper.JobsSweeper"
    # the jobs, each a list of overrides (``[[a=1, b=x], [a=2]]``); hydra.* keys allowed per job
    jobs: list[list[str]] = field(default_factory=list)
    # or a YAML file holding that list (what a tool writes); its jobs come after ``jobs``
    jobs_file: Optional[str] = None
    # hydra.job.num of the first job: a multirun that adds jobs to an earlier sweep's numbering
    first_job_num: int = 0
    # not read: lets a preset written for the basic sweeper's ``params`` compose under this one
    params: Optional[dict[str, Any]] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="jobs", node=JobsSweeperConf, provider="jobs_sweeper"
)
