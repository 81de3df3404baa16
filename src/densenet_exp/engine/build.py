"""A rank's components, built from the config: data, model, optimizer, precision, schedule."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import distributed as du
from ..config import Config, DataConfig, DataName
from ..data import (
    DataBundle,
    DataError,
    DeviceBatches,
    build_datasets,
    build_loaders,
    device_batches,
)
from ..models import (
    build_model,
    compile_model,
    count_parameters,
    min_input_size,
)
from ..models.cost import count_macs
from ..models.sync_batchnorm import convert_sync_batchnorm
from ..optim import build_optimizer, build_scheduler
from ..precision import Precision
from ..process import cores_per_rank, heap_trimmer
from .helpers import no_buffer_sync

log = logging.getLogger("densenet_exp")


@dataclass
class Components:
    data_cfg: DataConfig  # cfg.data with the image size the model needs (a copy)
    bundle: DataBundle
    model: nn.Module  # the network itself, neither DDP- nor compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    ema: Any  # torch.optim.swa_utils.AveragedModel, or None
    train: DeviceBatches  # the splits as device-ready batches, epoch by epoch
    val: DeviceBatches
    accum: int
    steps_per_epoch: int
    n_params: int
    macs: int | None  # multiply-adds of one image (rank 0 only)
    channels_last: bool  # inputs (and so activations) NHWC


def data_config(cfg: Config) -> DataConfig:
    """``cfg.data``, with the embedded digits upscaled to what the model needs.

    The size is derived here, on a copy: the config itself (saved in checkpoints) stays as
    Hydra composed it.
    """
    data_cfg = cfg.data
    smallest = min_input_size(cfg.model)
    if data_cfg.image_size < smallest:
        if data_cfg.name != DataName.digits:
            raise DataError(
                f"data.image_size={data_cfg.image_size} is smaller than the model's total "
                f"downsampling ({smallest}x); use data.image_size >= {smallest}"
            )
        log.info(
            "data.image_size %s -> %d for model %s", data_cfg.image_size, smallest, cfg.model.name
        )
        data_cfg = dataclasses.replace(data_cfg, image_size=smallest)
    return data_cfg


def build(cfg: Config, ctx: du.DistContext) -> Components:
    tr, device = cfg.trainer, ctx.device
    data_cfg = data_config(cfg)  # (train() checked the config before the ranks started)
    cores = cores_per_rank(ctx.local_world_size)
    bundle = build_datasets(data_cfg, tr.seed, local_ranks=ctx.local_world_size, cores=cores)
    model = build_model(cfg, num_classes=len(bundle.classes)).to(device)
    if tr.channels_last:
        model.to(memory_format=torch.channels_last)
    if tr.heap_trim and hasattr(model, "set_memory_hook"):  # the fast memory-efficient layers
        model.set_memory_hook(heap_trimmer(device))
    # the cost of the choice, for the by-configuration summary: one forward of one image
    macs = count_macs(model, data_cfg.image_size) if ctx.is_main else None
    if cfg.sync_bn and ctx.distributed:
        model = convert_sync_batchnorm(model, device)
    optimizer = build_optimizer(model, cfg.optim)
    precision = Precision(cfg.amp, device)
    precision.prepare(model, optimizer)
    loaders = build_loaders(bundle, data_cfg, ctx.rank, ctx.world_size, tr.seed, device, cores)
    train, val = device_batches(bundle, loaders, data_cfg.batch_size, device)
    accum = max(1, tr.grad_accum)
    steps_per_epoch = len(train) // accum
    if steps_per_epoch < 1:
        raise DataError(
            f"one epoch has {len(train)} batch(es), fewer than trainer.grad_accum={accum}"
        )
    total_steps = tr.epochs * steps_per_epoch
    if tr.max_steps is not None:
        total_steps = min(total_steps, tr.max_steps)
    scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch, total_steps)
    ema = None
    if tr.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tr.ema), use_buffers=True)
    return Components(
        data_cfg,
        bundle,
        model,
        optimizer,
        scheduler,
        precision,
        ema,
        train,
        val,
        accum,
        steps_per_epoch,
        count_parameters(model),
        macs,
        tr.channels_last,
    )


def wrap(
    c: Components, cfg: Config, ctx: du.DistContext, rank_buffers: dict[str, list]
) -> tuple[nn.Module, nn.Module]:
    """(the DDP-wrapped model, the one forward runs: compiled or not).

    ``rank_buffers``: this rank's own BN statistics of a resumed half-done epoch, put back after
    DDP, which copies rank 0's buffers to every rank when it wraps.
    """
    ddp_model: nn.Module = c.model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp_model = DDP(c.model, device_ids=device_ids, **no_buffer_sync())
    if rank_buffers:
        own = dict(c.model.named_buffers())
        with torch.no_grad():
            for name, values in rank_buffers.items():
                own[name].copy_(torch.tensor(values, dtype=own[name].dtype))
    train_model = compile_model(ddp_model) if cfg.trainer.compile else ddp_model
    return ddp_model, train_model
