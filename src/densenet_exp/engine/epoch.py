"""One epoch of training: forward, backward and optimizer steps over this rank's shard."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import distributed as du
from ..config import TrainerConfig
from ..data import Batch
from .build import Components
from .helpers import loss_fn, model_input
from .trainer import Trainer


@dataclass
class EpochResult:
    loss_sum: torch.Tensor  # this rank's summed step losses (a device scalar: no sync per step)
    loss_count: int
    images: int  # this rank's training images
    reached_max_steps: bool


def train_one_epoch(t: Trainer, epoch: int) -> EpochResult:
    """Train ``epoch`` from ``st.batch_in_epoch`` on (a resumed epoch skips what it trained)."""
    c, st, tr, ctx = t.c, t.st, t.tr, t.ctx
    skip = st.batch_in_epoch if epoch == st.epoch else 0
    resumed = skip > 0
    loss_sum = torch.full((), st.partial[0] if resumed else 0.0, device=ctx.device)
    loss_count = st.partial[1] if resumed else 0
    pending: torch.Tensor | None = None  # last step's loss, checked one step late (no sync)
    images, micro, every = 0, 0, tr.ckpt_every_n_steps
    reached_max_steps = False
    t.ddp_model.train()
    c.precision.zero_grad(c.optimizer, c.model)
    for batch in _progress(c.train.epoch(epoch, skip), len(c.train), epoch, tr, ctx):
        micro += 1
        last_micro = micro % c.accum == 0
        with t.ddp_model.no_sync() if ctx.distributed and not last_micro else nullcontext():
            loss = _forward_backward(t, batch.x, batch.y)
        images += len(batch.y)
        if not last_micro:
            continue
        _optimizer_step(c, tr.grad_clip)
        st.global_step += 1
        if pending is not None:
            t.guard.check(pending, st.global_step - 1)
        pending = loss.detach()
        loss_sum += pending
        loss_count += 1
        if ctx.is_main and st.global_step % max(1, tr.log_every_n_steps) == 0:
            lr = c.optimizer.param_groups[0]["lr"]
            t.record.step(epoch, st.global_step, pending.item(), lr, c.precision.loss_scale)
        stopping = t.stop_signal.requested(ctx, st.global_step)
        if stopping or (every and st.global_step % every == 0):
            t.guard.check(pending, st.global_step)
            pending = None
            if t.guard.healthy:
                partial = (loss_sum.item(), loss_count)
                t.saver.save(st, epoch, batch.position + 1, "last.pt", partial)
        if stopping:
            raise t.stop_signal.interrupted(st.global_step, epoch, t.saver.dir)
        if tr.max_steps is not None and st.global_step >= tr.max_steps:
            reached_max_steps = True
            break
    if pending is not None:
        t.guard.check(pending, st.global_step)
    return EpochResult(loss_sum, loss_count, images, reached_max_steps)


def _forward_backward(t: Trainer, x: Tensor, y: Tensor) -> Tensor:
    """One micro-batch: forward and loss under the precision's autocast, then its backward."""
    c, tr = t.c, t.tr
    x = model_input(x, c.precision, c.channels_last)
    with c.precision.autocast():
        loss = loss_fn(t.train_model(x), y, tr.loss, tr.label_smoothing, tr.focal_gamma)
    c.precision.backward(loss / c.accum)
    return loss


def _optimizer_step(c: Components, grad_clip: float | None) -> None:
    """Unscale, clip and step (skipped on an fp16 overflow), then the schedule and the EMA."""
    c.precision.step(c.optimizer, grad_clip)
    c.precision.zero_grad(c.optimizer, c.model)
    c.scheduler.step()
    if c.ema is not None:
        c.ema.update_parameters(c.model)


def _progress(
    batches: Iterator[Batch], total: int, epoch: int, tr: TrainerConfig, ctx: du.DistContext
) -> Iterator[Batch]:
    if not (tr.progress and ctx.is_main and sys.stderr.isatty()):
        return batches
    from tqdm import tqdm

    desc = f"epoch {epoch + 1}/{tr.epochs}"
    return iter(tqdm(batches, desc=desc, total=total, leave=False, dynamic_ncols=True))
