"""``python -m densenet_exp [overrides]``: compose, train every rank, return the objective."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from . import train
from .config import config_dir
from .overrides import NOT_IN_JOB_NAMES, override_key, override_value, sweep_record
from .plugins import find_own_plugins

log = logging.getLogger("densenet_exp")


find_own_plugins()


def _swept_keys(sweep_dir: str | None, sweeper_params: Any) -> set[str]:
    """The keys a sweep varies, from what Hydra records for it, the same under every launcher.

    The basic sweeper saves the sweep's own config, with the command line's raw overrides
    (``conv=standard,dsconv``), as ``<sweep>/multirun.yaml`` before any job starts; a launcher
    that runs jobs elsewhere (submitit, SLURM) has no ``sys.argv`` to read, but the file is there.
    Sweepers that do not write it (Optuna) name their axes in ``hydra.sweeper.params``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = {str(k) for k in (sweeper_params or {})}
    record = sweep_record(sweep_dir)
    if record is not None:
        hydra_node = record.get("hydra", {})
        raw = [str(o) for o in (hydra_node.get("overrides", {}).get("task") or [])]
        params = hydra_node.get("sweeper", {}).get("params") or {}
        raw += [f"{k}={v}" for k, v in params.items()]
        parsed = OverridesParser.create().parse_overrides(raw)
        swept |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return swept


def _job_dirname(sweep_dir: str | None, task_overrides: Any, sweeper_params: Any = None) -> str:
    """A sweep job's folder name: the overrides that vary across the sweep, else all of them.

    Presets are left out; a swept seed goes last as ``seed=N``, so a configuration's replicas
    sort together and stay apart. The job number Hydra puts in front keeps names unique.
    """
    overrides = [str(o) for o in (task_overrides or [])]
    swept = _swept_keys(sweep_dir, sweeper_params)
    named = [o for o in overrides if override_key(o) not in NOT_IN_JOB_NAMES]
    chosen = [o for o in named if override_key(o) in swept] or named
    if "trainer.seed" in swept:
        chosen += [
            f"seed={override_value(o)}" for o in overrides if override_key(o) == "trainer.seed"
        ]
    name = ",".join(chosen).replace("/", "_").replace("\\", "_")
    return name[:120] or "defaults"


OmegaConf.register_new_resolver("densenet_exp.dirname", _job_dirname, replace=True)


def _sqlite_url(path: str) -> str:
    """``sqlite:///ABS/PATH`` for a database file, its folder made: SQLite makes the file, not
    the folders, and an Optuna study is opened before Hydra makes any sweep folder."""
    from pathlib import Path

    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


OmegaConf.register_new_resolver("densenet_exp.sqlite", _sqlite_url, replace=True)
# conf/config.yaml's hydra.job.config.override_dirname.exclude_keys, from the same list
OmegaConf.register_new_resolver(
    "densenet_exp.not_in_job_names", lambda: list(NOT_IN_JOB_NAMES), replace=True
)


def _share_cores_with_parallel_jobs() -> None:
    """Under the joblib launcher, jobs run side by side: give each its share of the cores."""
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs and int(n_jobs) > 1:
        from .process import share_cores_between_jobs

        share_cores_between_jobs(int(n_jobs))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train; return best val top-1 so sweepers (Optuna) can maximise it.

    In a multirun a failing job is recorded (metrics.json says failed) and returns None, no
    objective at all (Optuna records a failed trial; NaN would be told as a value, which Optuna
    2.10 refuses mid-search), so the other jobs still run; the sweep-summary callback then exits
    non-zero.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        _share_cores_with_parallel_jobs()
    try:
        summary = train(cfg)
    except Exception as e:
        if not multirun:
            raise
        log.error("job failed: %s: %s", type(e).__name__, e)
        return None
    best = (summary or {}).get("best_val_top1")
    return float(best) if best is not None else None


if __name__ == "__main__":
    main()
