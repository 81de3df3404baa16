"""``fit``: one rank's training, top to bottom. The pieces it calls are named after what they do."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import distributed as du
from ..config import Config
from ..metrics import EpochRow, RunSummary, Status
from ..val_predictions import PredictionSink
from .build import Components, build, wrap
from .epoch import EpochResult, train_one_epoch
from .evaluate import evaluate
from .guards import LossGuard, StopSignal
from .helpers import peak_memory_mb, seed_everything
from .record import RunLog
from .state import Checkpointer, TrainState, restore


def fit(cfg: Config, run_dir: Path, ctx: du.DistContext) -> dict[str, Any]:
    """Train and evaluate for ``trainer.epochs``; returns the summary written to metrics.json."""
    with StopSignal() as stop_signal:  # from the start: a preempted set-up stops cleanly too
        t_start = time.perf_counter()
        tr = cfg.trainer
        seed_everything(tr.seed + ctx.rank, tr.deterministic)
        c = build(cfg, ctx)
        st = restore(c, cfg, run_dir, ctx)
        ddp_model, train_model = wrap(c, cfg, ctx, st.rank_buffers)
        record = RunLog(run_dir, ctx, cfg, c)
        saver = Checkpointer(c, cfg, ctx, run_dir / "checkpoints")
        guards = (LossGuard(tr.max_nonfinite_steps, saver.dir), stop_signal)
        epochs, eval_every = tr.epochs, max(1, tr.eval_every)
        images, train_time, last_eval = 0, 0.0, {}
        epoch = st.epoch - 1
        for epoch in range(st.epoch, epochs):
            t_epoch = time.perf_counter()
            models = (ddp_model, train_model)
            result = train_one_epoch(c, models, st, epoch, cfg, ctx, guards, saver, record)
            train_time += time.perf_counter() - t_epoch
            images += result.images
            if (epoch + 1) % eval_every == 0 or result.reached_max_steps or epoch == epochs - 1:
                if not cfg.sync_bn:
                    du.average_buffers(c.model)  # rank 0's running stats become the global ones
                eval_model = c.ema.module if c.ema is not None else ddp_model
                speed = images * ctx.world_size / max(train_time, 1e-9)
                last_eval = validate(c, eval_model, st, epoch, result, ctx, record, speed, t_start)
                if last_eval["best"]:
                    saver.save(st, epoch + 1, 0, "best.pt")
            saver.save(st, epoch + 1, 0, "last.pt")
            if result.reached_max_steps:
                break
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
        img_per_s=images * ctx.world_size / max(train_time, 1e-9),
        peak_mem_mb=peak_memory_mb(ctx.device),
        wall_s=time.perf_counter() - t_start,
        world_size=ctx.world_size,
        skipped_steps=c.precision.skipped_steps,
    ).to_dict()
    record.close(summary)
    return summary


def validate(
    c: Components,
    model: Any,
    st: TrainState,
    epoch: int,
    result: EpochResult,
    ctx: du.DistContext,
    record: RunLog,
    img_per_s: float,
    t_start: float,
) -> dict[str, Any]:
    """Evaluate, keep the best, and record the evaluation (every rank; rank 0 writes)."""
    sink = PredictionSink()
    metrics = evaluate(
        model,
        c.val_loader,
        c.precision,
        ctx.device,
        c.channels_last,
        sink,
        prepare=c.bundle.eval_on_device,
    )
    best = metrics["val_top1"] > st.best_top1
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
        img_per_s=img_per_s,
        peak_mem_mb=peak_memory_mb(ctx.device),
        time_s=time.perf_counter() - t_start,
        skipped_steps=c.precision.skipped_steps,
    )
    record.evaluation(row, best, sink.gather())
    return {**metrics, "best": best}
