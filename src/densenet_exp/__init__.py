"""densenet_exp: train and compare DenseNet image classifiers, from one CPU to many GPUs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "train"]


def _run_dir_from_hydra() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra
        return None
    return None


def train(cfg: Any, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one training job on every rank it asks for and return rank 0's final metrics.

    ``cfg`` is the composed config (DictConfig, nested dicts or a ``config.Config``); the ranks
    receive it as the typed ``Config`` (``config.to_typed``). The run directory defaults to
    Hydra's output directory. With ``dist.nproc_per_node`` > 1 (or several nodes) the ranks are
    started here with torch's elastic launcher; under an external ``torchrun`` this process is
    already one rank and trains as such.
    """
    from . import distributed as du
    from .config import to_typed
    from .data import check_decode
    from .engine import run_rank, spawned_rank
    from .models import check_model_config
    from .process import too_few_cores
    from .tracking.store import check_settings

    cfg = to_typed(cfg)
    run_dir = Path(run_dir) if run_dir is not None else _run_dir_from_hydra()
    if run_dir is None:
        raise ValueError("train(cfg) needs run_dir when called outside a Hydra app")
    run_dir = run_dir.resolve()
    _resume_when_requeued(cfg.trainer)
    finished = _finished_already(cfg.trainer, run_dir)
    if finished is not None:
        return finished
    # the config's cross-key checks, once, where it enters: before any rank starts or data is read
    check_model_config(cfg.model)
    check_settings(cfg.logger.mlflow)
    _check_writable(run_dir)
    device = du.resolve_device(cfg.trainer.device)
    check_decode(cfg.data, device)
    nproc = du.nproc_per_node(cfg.dist, device)
    if du.under_external_launcher() or (nproc == 1 and cfg.dist.nnodes == 1):
        return run_rank(cfg, str(run_dir))
    _prepare_data_once(cfg.data)
    if device.type == "cpu" and (crowded := too_few_cores(nproc)):
        logging.getLogger("densenet_exp").warning(crowded)
    from .engine.guards import RelayPreemption

    with RelayPreemption():  # under submitit: its requeue, once the ranks have checkpointed
        return du.launch(spawned_rank, (cfg, str(run_dir)), cfg.dist, nproc, device)


def _resume_when_requeued(trainer: Any) -> None:
    """A job SLURM requeued (preempted, or timed out and checkpointed by submitit) runs its
    command again: it continues from its own last checkpoint, never over it from scratch."""
    import logging
    import os

    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if restarts > 0 and not trainer.resume:
        trainer.resume = "auto"
        logging.getLogger("densenet_exp").info(
            "SLURM requeued this job (restart %d): resuming from its last checkpoint", restarts
        )


def _finished_already(trainer: Any, run_dir: Path) -> dict[str, Any] | None:
    """The summary of the completed run in ``run_dir`` when resuming it asks for nothing more.

    A finished run is final: resuming it (a sweep run again with ``trainer.resume=auto``, say)
    must not train a step or rewrite a file. Only more epochs, or more steps, continue it.
    """
    import json
    import logging

    from .metrics import SUMMARY_FILE, Status

    resume = trainer.resume
    if not resume or (resume != "auto" and run_dir not in Path(resume).resolve().parents):
        return None  # a fresh run, or another run's checkpoint as a starting point
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != Status.completed:
        return None  # interrupted or failed: resume it
    steps, epochs = summary.get("steps") or 0, summary.get("epochs") or 0
    at_max_steps = trainer.max_steps is not None and steps >= trainer.max_steps
    if not at_max_steps and epochs < trainer.epochs:
        return None  # more epochs asked for: continue from last.pt
    logging.getLogger("densenet_exp").info(
        "%s finished already (epoch %d, step %d): nothing to train, nothing rewritten; "
        "trainer.epochs above %d continues it",
        run_dir,
        epochs,
        steps,
        epochs,
    )
    return summary


def _check_writable(run_dir: Path) -> None:
    """Fail before any work when results could not be saved."""
    import os
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # a name of its own: every node of a multi-node job probes the same folder at once
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"output directory {run_dir} is not writable: {e}") from e


def _prepare_data_once(data: Any) -> None:
    """Write the embedded data set before ranks start, so they don't all race to build it."""
    from .config import DataName

    if data.name == DataName.digits:
        from .data.digits import ensure_digits

        ensure_digits(data.root)
