"""One epoch of training: forward, backward and optimizer steps over this rank's shard."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed as du
from ..config import Config, TrainerConfig
from .build import Components
from .guards import LossGuard, StopSignal
from .helpers import loss_fn
from .record import RunLog
from .state import Checkpointer, TrainState


@dataclass
class EpochResult:
    loss_sum: torch.Tensor  # this rank's summed step losses (a device scalar: no sync per step)
    loss_count: int
    images: int  # this rank's training images
    reached_max_steps: bool


def train_one_epoch(
    c: Components,
    models: tuple[nn.Module, nn.Module],
    st: TrainState,
    epoch: int,
    cfg: Config,
    ctx: du.DistContext,
    guards: tuple[LossGuard, StopSignal],
    saver: Checkpointer,
    record: RunLog,
) -> EpochResult:
    """Train ``epoch`` from ``st.batch_in_epoch`` on (a resumed epoch skips what it trained)."""
    tr, device = cfg.trainer, ctx.device
    ddp_model, train_model = models
    guard, stop_signal = guards
    skip = _start_epoch(c, ddp_model, st, epoch)
    resumed = skip > 0
    loss_sum = torch.full((), st.partial[0] if resumed else 0.0, device=device)
    loss_count = st.partial[1] if resumed else 0
    pending: torch.Tensor | None = None  # last step's loss, checked one step late (no sync)
    images, micro, every = 0, 0, tr.ckpt_every_n_steps
    reached_max_steps = False
    c.precision.zero_grad(c.optimizer, c.model)
    for batch_idx, batch in enumerate(_progress(c.train_loader, epoch, tr, ctx), start=skip):
        if batch is None:  # every image of this batch failed to decode
            continue
        x, y = _to_device(c, batch, device, epoch)
        micro += 1
        last_micro = micro % c.accum == 0
        with ddp_model.no_sync() if ctx.distributed and not last_micro else nullcontext():
            loss = _forward_backward(c, train_model, x, y, tr)
        images += len(y)
        if not last_micro:
            continue
        _optimizer_step(c, tr.grad_clip)
        st.global_step += 1
        if pending is not None:
            guard.check(pending, st.global_step - 1)
        pending = loss.detach()
        loss_sum += pending
        loss_count += 1
        if ctx.is_main and st.global_step % max(1, tr.log_every_n_steps) == 0:
            lr = c.optimizer.param_groups[0]["lr"]
            record.step(epoch, st.global_step, pending.item(), lr, c.precision.loss_scale)
        stopping = stop_signal.requested(ctx, st.global_step)
        if stopping or (every and st.global_step % every == 0):
            guard.check(pending, st.global_step)
            pending = None
            if guard.healthy:
                partial = (loss_sum.item(), loss_count)
                saver.save(st, epoch, batch_idx + 1, "last.pt", partial)
        if stopping:
            raise stop_signal.interrupted(st.global_step, epoch, saver.dir)
        if tr.max_steps is not None and st.global_step >= tr.max_steps:
            reached_max_steps = True
            break
    if pending is not None:
        guard.check(pending, st.global_step)
    return EpochResult(loss_sum, loss_count, images, reached_max_steps)


def _forward_backward(
    c: Components, model: nn.Module, x: Tensor, y: Tensor, tr: TrainerConfig
) -> Tensor:
    """One micro-batch: forward and loss under the precision's autocast, then its backward."""
    with c.precision.autocast():
        loss = loss_fn(model(x), y, tr.loss, tr.label_smoothing, tr.focal_gamma)
    c.precision.backward(loss / c.accum)
    return loss


def _optimizer_step(c: Components, grad_clip: float | None) -> None:
    """Unscale, clip and step (skipped on an fp16 overflow), then the schedule and the EMA."""
    c.precision.step(c.optimizer, grad_clip)
    c.precision.zero_grad(c.optimizer, c.model)
    c.scheduler.step()
    if c.ema is not None:
        c.ema.update_parameters(c.model)


def _start_epoch(c: Components, ddp_model: nn.Module, st: TrainState, epoch: int) -> int:
    """Position the sampler and the augmentation on ``epoch``; returns the batches to skip."""
    skip = st.batch_in_epoch if epoch == st.epoch else 0
    c.sampler.set_epoch(epoch)
    c.sampler.set_start(skip * c.data_cfg.batch_size)
    if hasattr(c.bundle.train, "set_epoch"):  # per-sample augmentation from (seed, epoch, index)
        c.bundle.train.set_epoch(epoch)
    ddp_model.train()
    return skip


def _to_device(
    c: Components, batch: Any, device: torch.device, epoch: int
) -> tuple[Tensor, Tensor]:
    """The batch on the device, as the model takes it (a cached or streamed split's uint8
    ``(x, y, index, sizes)`` augmented there)."""
    x, y, *rest = batch
    x = x.to(device, non_blocking=True)
    if c.bundle.train_on_device is not None:
        index, sizes = rest
        x = c.bundle.train_on_device(x, index, epoch, sizes)
    x = c.precision.cast_input(x)
    if c.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _progress(loader: Any, epoch: int, tr: TrainerConfig, ctx: du.DistContext) -> Any:
    if not (tr.progress and ctx.is_main and sys.stderr.isatty()):
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{tr.epochs}", leave=False, dynamic_ncols=True)
