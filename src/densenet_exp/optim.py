"""Optimizer with decay/no-decay parameter groups, and per-iteration LR schedules with warmup."""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ._compat import choice
from .models.layers import norm_bias_parameters

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cos", "poly", "step", "multistep", "constant")


def build_optimizer(model: nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    name = choice(optim_cfg["name"])
    wd = float(optim_cfg["weight_decay"])
    params = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg["no_decay_norm_bias"] and wd > 0:
        skip = norm_bias_parameters(model)
        groups = [
            {"params": [p for p in params if id(p) not in skip], "weight_decay": wd},
            {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    lr = float(optim_cfg["lr"])
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=float(optim_cfg["momentum"]),
            nesterov=bool(optim_cfg["nesterov"]) and float(optim_cfg["momentum"]) > 0,
        )
    if name == "adamw":
        betas = tuple(float(b) for b in optim_cfg["betas"])
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


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
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** (epoch // max(1, step_size))
    if name == "multistep":
        return gamma ** bisect.bisect_right(sorted(milestones), epoch)
    t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if name == "cos":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if name == "poly":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - t) ** power
    raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, sched_cfg: Any, steps_per_epoch: int, total_steps: int
) -> LambdaLR:
    name = choice(sched_cfg["name"])
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    kwargs = dict(
        name=name,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_epochs=float(sched_cfg["warmup_epochs"]),
        min_lr_ratio=float(sched_cfg["min_lr_ratio"]),
        power=float(sched_cfg["power"]),
        step_size=int(sched_cfg["step_size"]),
        milestones=tuple(int(m) for m in sched_cfg["milestones"]),
        gamma=float(sched_cfg["gamma"]),
    )
    return LambdaLR(optimizer, lambda step: lr_factor(step, **kwargs))
