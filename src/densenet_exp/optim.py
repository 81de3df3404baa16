"""Optimizer with decay/no-decay parameter groups, and per-iteration LR schedules with warmup."""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig, OptimName, SchedConfig, SchedName, node
from .models.layers import norm_bias_parameters


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig | Any) -> torch.optim.Optimizer:
    """SGD or AdamW over ``model``, with no weight decay on norms and biases if asked."""
    o = node(OptimConfig, optim_cfg, "optim")
    wd = o.weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    if o.no_decay_norm_bias and wd > 0:
        skip = norm_bias_parameters(model)
        groups = [
            {"params": [p for p in params if id(p) not in skip], "weight_decay": wd},
            {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    if o.name == OptimName.sgd:
        nesterov = o.nesterov and o.momentum > 0  # torch refuses nesterov without momentum
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def lr_factor(
    step: int,
    name: str,
    steps_per_epoch: int,
    total_steps: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
    power: float = 0.9,
    step_size: int = 30,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps (per iteration, not per epoch)."""
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    epoch = step // max(1, steps_per_epoch)
    if name == SchedName.constant:
        return 1.0
    if name == SchedName.step:
        return gamma ** (epoch // max(1, step_size))
    if name == SchedName.multistep:
        return gamma ** bisect.bisect_right(sorted(milestones), epoch)
    t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if name == SchedName.cos:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if name == SchedName.poly:
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - t) ** power
    choices = SchedName.valid()
    raise ValueError(f"unknown schedule {name!r}; valid choices: {choices}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    sched_cfg: SchedConfig | Any,
    steps_per_epoch: int,
    total_steps: int,
) -> LambdaLR:
    """The per-iteration schedule of ``sched_cfg`` over ``total_steps`` optimizer steps."""
    s = node(SchedConfig, sched_cfg, "sched")
    kwargs = dict(
        name=s.name.value,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_epochs=s.warmup_epochs,
        min_lr_ratio=s.min_lr_ratio,
        power=s.power,
        step_size=s.step_size,
        milestones=tuple(s.milestones),
        gamma=s.gamma,
    )
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))
