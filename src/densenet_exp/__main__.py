"""``python -m densenet_exp [overrides]``: compose, train every rank, return the objective."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from . import train
from .config import config_dir

log = logging.getLogger("densenet_exp")


_NOT_IN_NAMES = {"trainer.seed", "trainer.resume", "experiment", "hparams_search"}
_SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(", "tag(")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_sweep(value: str) -> bool:
    """A command-line value that makes a sweep: a top-level comma or a sweep function."""
    depth = 0
    for ch in value:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            return True
    return value.startswith(_SWEEP_FUNCTIONS)


def _job_dirname(task_overrides: Any, sweeper_params: Any = None) -> str:
    """A sweep job's folder name: the overrides that vary across the sweep, else all of them.

    The swept keys come from ``hydra.sweeper.params`` and from the command line; the seed and
    presets are left out. The job number Hydra puts in front keeps names unique.
    """
    overrides = [str(o) for o in (task_overrides or []) if _key(str(o)) not in _NOT_IN_NAMES]
    swept = {str(k) for k in (sweeper_params or {})}
    swept |= {_key(a) for a in sys.argv[1:] if "=" in a and _is_sweep(a.split("=", 1)[1])}
    chosen = [o for o in overrides if _key(o) in swept] or overrides
    name = ",".join(chosen).replace("/", "_").replace("\\", "_")
    return name[:120] or "defaults"


OmegaConf.register_new_resolver("densenet_exp.dirname", _job_dirname, replace=True)


def _share_cores_with_parallel_jobs() -> None:
    """Under the joblib launcher, jobs run side by side: give each its share of the cores."""
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs and int(n_jobs) > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(n_jobs))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train; return best val top-1 so sweepers (Optuna) can maximise it.

    In a multirun a failing job is recorded (metrics.json says failed) and returns NaN, so the
    other jobs still run; the sweep-summary callback then exits non-zero.
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
        return float("nan")
    best = (summary or {}).get("best_val_top1")
    return float(best) if best is not None else float("nan")


if __name__ == "__main__":
    main()
