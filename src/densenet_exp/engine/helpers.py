"""Small pieces of a rank's run: logging, seeding, the loss, memory, unwrapping the model."""

from __future__ import annotations

import logging
import random
import resource
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import LossName
from ..precision import Precision

log = logging.getLogger("densenet_exp")


def setup_logging(run_dir: Path, rank: int) -> None:
    """Rank 0 logs INFO to ``train.log`` and the console; other ranks log warnings, tagged."""
    root = logging.getLogger()
    path = (run_dir / "train.log").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(
        f"[%(asctime)s][%(name)s][%(levelname)s]{'' if rank == 0 else f'[rank {rank}]'} %(message)s"
    )
    ours = [
        h
        for h in root.handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == path
    ]
    for handler in ours:  # e.g. Hydra's, in every rank under torchrun: tag the rank
        if rank != 0:
            handler.setFormatter(fmt)
    if not ours:
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    level = logging.INFO if rank == 0 else logging.WARNING
    root.setLevel(level)
    logging.getLogger("densenet_exp").setLevel(level)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux: the process's peak resident set, the CPU analogue
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, kind: str, label_smoothing: float, gamma: float
) -> torch.Tensor:
    logits = logits.float()
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    if kind == LossName.ce:
        return ce.mean()
    if kind == LossName.focal:
        # per-sample focal loss (Lin et al. 2017): (1 - p_t)^gamma * CE, p_t from the true class
        log_pt = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        return ((1.0 - log_pt.exp()).clamp_min(0.0).pow(gamma) * ce).mean()
    raise ValueError(f"unknown trainer.loss {kind!r}; valid choices: {LossName.valid()}")


def model_input(x: torch.Tensor, precision: Precision, channels_last: bool) -> torch.Tensor:
    """A device-ready batch in the precision and memory format the model runs in."""
    x = precision.cast_input(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DDP) else model


def no_buffer_sync() -> dict[str, bool]:
    """BN stats are averaged explicitly before eval (or synced by SyncBN): DDP need not copy
    rank 0's buffers every forward. torch 2.14 renamed the flag; 2.11 (GPU hosts) has the old one.
    """
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
