"""The entry of one rank: set up, fit, and record how it ended, whatever happened."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import record

from .. import distributed as du
from ..closing import closing_block
from ..config import Config, to_typed
from ..metrics import SUMMARY_FILE, RunSummary, Status
from ..process import configure_rank
from ..tracking.run import open_run
from .guards import TrainingInterrupted, hand_over_preemption
from .helpers import setup_logging
from .loop import fit

log = logging.getLogger("densenet_exp")


def run_rank(cfg: Config | Any, run_dir: str) -> dict[str, Any]:
    """Entry of one rank: in-process, under torchrun, or spawned by ``distributed.launch``."""
    cfg = to_typed(cfg)
    run_path = Path(run_dir)
    ctx = du.setup(cfg.dist, cfg.trainer.device)
    configure_rank(ctx.local_world_size, ctx.device, compile=cfg.trainer.compile)
    setup_logging(run_path, ctx.rank)
    t0 = time.perf_counter()
    tracked = open_run(cfg, run_path) if ctx.is_main else None  # MLflow, when it is on
    try:
        summary = fit(cfg, run_path, ctx, tracked)
        ended = RunSummary(**summary)
    except (KeyboardInterrupt, TrainingInterrupted) as e:
        log.warning("interrupted: %s", e or "KeyboardInterrupt")
        ended = RunSummary(Status.interrupted.value, error=str(e))
        raise
    except BaseException as e:
        log.error("training failed on rank %d: %s: %s", ctx.rank, type(e).__name__, e)
        ended = RunSummary(Status.failed.value, error=f"{type(e).__name__}: {e}")
        # No destroy_process_group here: it would make the other ranks fail with "connection
        # closed" before this rank's own error is recorded, and the job would report that instead.
        raise
    else:
        summary = du.from_rank_0(summary)
        du.cleanup()
    finally:
        # however the run ended, rank 0 writes metrics.json and says so at the end of the log
        if ended.wall_s is None:
            ended.wall_s = time.perf_counter() - t0
        record = ended.to_dict()
        _write_summary(run_path, ctx, record)
        if tracked is not None:
            tracked.end(record)
        _closing_block(run_path, ctx, record)
        hand_over_preemption()  # under submitit: its requeue, now that last.pt is written
    return summary


def _closing_block(run_dir: Path, ctx: du.DistContext, summary: dict[str, Any]) -> None:
    if ctx.is_main:
        log.info("%s", closing_block(run_dir, summary))


def _write_summary(run_dir: Path, ctx: du.DistContext, summary: dict[str, Any]) -> None:
    if not ctx.is_main:
        return
    path = run_dir / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)


@record
def spawned_rank(cfg: Config, run_dir: str) -> dict[str, Any]:
    """``run_rank`` for ranks started by ``distributed.launch``: ``record`` writes the rank's
    exception to the file the launcher reads, so the parent can report the real error."""
    return run_rank(cfg, run_dir)
