"""``fit``: one rank's training, top to bottom. The pieces it calls are named after what they do."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .. import distributed as du
from ..config import Config
from ..metrics import HISTORY_FILE, EpochRow, RunSummary, Status
from ..tracking.run import MlflowRun
from ..val_predictions import PredictionSink
from .epoch import EpochResult, train_one_epoch
from .evaluate import evaluate
from .guards import StopSignal
from .helpers import peak_memory_mb, seed_everything
from .trainer import Trainer


def fit(
    cfg: Config, run_dir: Path, ctx: du.DistContext, tracked: MlflowRun | None = None
) -> dict[str, Any]:
    """Train and evaluate for ``trainer.epochs``; returns the summary written to metrics.json.

    ``tracked``: rank 0's MLflow run, if any, which the record logs each step and evaluation to.
    """
    with StopSignal() as stop_signal:  # from the start: a preempted set-up stops cleanly too
        seed_everything(cfg.trainer.seed + ctx.rank, cfg.trainer.deterministic)
        t = Trainer(cfg, run_dir, ctx, stop_signal, tracked)
        c, st, epochs = t.c, t.st, cfg.trainer.epochs
        eval_every = max(1, cfg.trainer.eval_every)
        last_eval: dict[str, Any] = {}
        epoch = st.epoch - 1
        if cfg.trainer.max_steps is not None and st.global_step >= cfg.trainer.max_steps:
            # resumed at max_steps (killed before metrics.json): its final evaluation is recorded
            epochs, last_eval = st.epoch, _last_evaluation(run_dir)
        for epoch in range(st.epoch, epochs):
            t_epoch = time.perf_counter()
            result = train_one_epoch(t, epoch)
            t.train_time += time.perf_counter() - t_epoch
            t.images += result.images
            # a model whose last losses were NaN is no checkpoint (agreed: saving is collective)
            healthy = t.guard.healthy_on_all(ctx, c.model)
            if (epoch + 1) % eval_every == 0 or result.reached_max_steps or epoch == epochs - 1:
                last_eval = validate(t, epoch, result, healthy)
                if last_eval["best"]:
                    t.saver.save(st, epoch + 1, 0, "best.pt")
            if healthy:
                t.saver.save(st, epoch + 1, 0, "last.pt")
            if result.reached_max_steps:
                break
        t.guard.check_final(last_eval.get("val_loss"), st.global_step, ctx)
    summary = RunSummary(
        status=Status.completed.value,
        best_val_top1=st.best_top1 if st.best_top1 >= 0 else None,
        best_epoch=st.best_epoch,
        final_val_top1=last_eval.get("val_top1"),
        final_val_loss=last_eval.get("val_loss"),
        epochs=epoch + 1,
        steps=st.global_step,
        params=c.n_params,
        macs_per_image=c.macs,
        img_per_s=t.img_per_s,
        peak_mem_mb=peak_memory_mb(ctx.device),
        wall_s=time.perf_counter() - t.t_start,
        world_size=ctx.world_size,
        skipped_steps=c.precision.skipped_steps,
    ).to_dict()
    t.record.close(summary)
    return summary


def _last_evaluation(run_dir: Path) -> dict[str, Any]:
    path = run_dir / HISTORY_FILE
    rows = path.read_text().splitlines() if path.is_file() else []
    return json.loads(rows[-1]) if rows else {}


def validate(t: Trainer, epoch: int, result: EpochResult, healthy: bool = True) -> dict[str, Any]:
    """Evaluate, keep the best, and record the evaluation (every rank; rank 0 writes)."""
    c, st, ctx = t.c, t.st, t.ctx
    if not t.cfg.sync_bn:
        du.average_buffers(c.model)  # rank 0's running stats become the global ones
    model = c.ema.module if c.ema is not None else t.ddp_model
    sink = PredictionSink()
    metrics = evaluate(model, c.val, c.precision, c.channels_last, sink)
    # a diverging model (NaN losses) is never "best", whatever its top-1 happens to be
    best = metrics["val_top1"] > st.best_top1 and healthy and math.isfinite(metrics["val_loss"])
    if best:
        st.best_top1, st.best_epoch = metrics["val_top1"], epoch
    steps = max(1, result.loss_count * ctx.world_size)
    train_loss = du.all_reduce_sum(result.loss_sum.clone()).item() / steps
    row = EpochRow(
        epoch=epoch,
        step=st.global_step,
        train_loss=train_loss,
        **metrics,
        lr=c.optimizer.param_groups[0]["lr"],
        img_per_s=t.img_per_s,
        peak_mem_mb=peak_memory_mb(ctx.device),
        time_s=time.perf_counter() - t.t_start,
        skipped_steps=c.precision.skipped_steps,
    )
    t.record.evaluation(row, best, sink.gather())
    return {**metrics, "best": best}
