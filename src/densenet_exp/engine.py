"""The training loop, per rank: fit -> train_one_epoch / evaluate.

Handed a plain config (nested dicts) and a run directory; knows nothing of Hydra. Rank 0 writes
every file (metrics, TensorBoard, checkpoints); all ranks train and reduce metrics.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP

from . import distributed as du
from . import val_predictions
from .checkpoint import load_resume_state, rng_state, save_checkpoint, set_rng_state
from .closing import closing_block
from .data import DataError, build_datasets, build_loaders, eval_transform_settings
from .metrics import HISTORY_FILE, SUMMARY_FILE, EpochRow, RunSummary
from .models import (
    build_model,
    check_model_config,
    compile_model,
    count_parameters,
    min_input_size,
)
from .models.cost import count_macs
from .models.sync_batchnorm import convert_sync_batchnorm
from .models.weights import check_state_dict
from .optim import build_optimizer, build_scheduler
from .precision import Precision
from .process import configure_rank, cores_per_rank
from .val_predictions import PredictionSink

log = logging.getLogger("densenet_exp")


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss stayed inf/nan for ``trainer.max_nonfinite_steps`` steps."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: the current step finished and ``last.pt`` was written."""


_SIGNAL_CHECK_EVERY = 10  # steps between the ranks' agreement on a received signal (DDP only)


class _StopSignal:
    """First SIGTERM/SIGINT: ask the loop to stop after this step. Second: default action (exit)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        log.warning("%s: stopping after this step (send it again to stop at once)", self.received)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, ctx: du.DistContext) -> bool:
        """Whether any rank got a signal (one tiny all-reduce per step under DDP)."""
        if not ctx.distributed:
            return self.received is not None
        flag = torch.tensor([1.0 if self.received else 0.0], device=ctx.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


# -- small helpers --------------------------------------------------------------------------------
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
    if kind == "ce":
        return ce.mean()
    if kind == "focal":
        # per-sample focal loss (Lin et al. 2017): (1 - p_t)^gamma * CE, p_t from the true class
        log_pt = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        return ((1.0 - log_pt.exp()).clamp_min(0.0).pow(gamma) * ce).mean()
    raise ValueError(f"unknown trainer.loss {kind!r}; valid choices: ce, focal")


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DDP) else model


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    precision: Precision,
    device: torch.device,
    channels_last: bool = False,
    predictions: PredictionSink | None = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole val set, summed across ranks: exact under DDP.

    Batches are ``(x, y)`` or ``(x, y, index)``; with the index, ``predictions`` collects each
    image's result for ``val_predictions.csv``.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    for batch in loader:
        if batch is None:
            continue
        x, y, *index = batch
        x = precision.cast_input(x.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x).float()
        if predictions is not None and index:
            predictions.add(index[0], y, logits)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        sums += torch.stack(
            [
                F.cross_entropy(logits, y, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=device),
            ]
        )
    du.all_reduce_sum(sums)
    loss, top1, top5, n = sums.tolist()
    model.train()
    if n == 0:
        raise DataError("no validation image could be read")
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}


# -- the loop -------------------------------------------------------------------------------------
def fit(cfg: dict[str, Any], run_dir: Path, ctx: du.DistContext) -> dict[str, Any]:
    """Train and evaluate for ``trainer.epochs``; returns the summary written to metrics.json."""
    with _StopSignal() as stop_signal:
        return _fit(cfg, run_dir, ctx, stop_signal)


def _fit(
    cfg: dict[str, Any], run_dir: Path, ctx: du.DistContext, stop_signal: _StopSignal
) -> dict[str, Any]:
    t_start = time.perf_counter()
    tr, data_cfg = cfg["trainer"], cfg["data"]
    device, main = ctx.device, ctx.is_main
    seed_everything(int(tr["seed"]) + ctx.rank, bool(tr["deterministic"]))
    ckpt_dir = run_dir / "checkpoints"

    check_model_config(cfg["model"])  # a bad architecture key fails before the data is read
    smallest = min_input_size(cfg["model"])
    if int(data_cfg["image_size"]) < smallest:
        if data_cfg["name"] != "digits":
            raise DataError(
                f"data.image_size={data_cfg['image_size']} is smaller than the model's total "
                f"downsampling ({smallest}x); use data.image_size >= {smallest}"
            )
        # the embedded 8x8 digits are upscaled anyway: upscale them to what the model needs
        log.info(
            "data.image_size %s -> %d for model %s",
            data_cfg["image_size"],
            smallest,
            cfg["model"]["name"],
        )
        data_cfg["image_size"] = smallest
    bundle = build_datasets(data_cfg, seed=int(tr["seed"]))
    model = build_model(cfg, num_classes=len(bundle.classes))
    model.to(device)
    if tr["channels_last"]:
        model.to(memory_format=torch.channels_last)
    # the cost of the choice, for the by-configuration summary: one forward of one image
    macs = count_macs(model, int(data_cfg["image_size"])) if main else None
    if cfg["sync_bn"] and ctx.distributed:
        model = convert_sync_batchnorm(model, device)
    n_params = count_parameters(model)

    optimizer = build_optimizer(model, cfg["optim"])
    precision = Precision(cfg["amp"], device)
    precision.prepare(model, optimizer)
    train_loader, val_loader, sampler = build_loaders(
        bundle,
        data_cfg,
        ctx.rank,
        ctx.world_size,
        int(tr["seed"]),
        device,
        cores=cores_per_rank(ctx.local_world_size),
    )
    accum = max(1, int(tr["grad_accum"]))
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch < 1:
        raise DataError(
            f"one epoch has {len(train_loader)} batch(es), fewer than trainer.grad_accum={accum}"
        )
    epochs = int(tr["epochs"])
    total_steps = epochs * steps_per_epoch
    if tr["max_steps"] is not None:
        total_steps = min(total_steps, int(tr["max_steps"]))
    scheduler = build_scheduler(optimizer, cfg["sched"], steps_per_epoch, total_steps)
    ema = None
    if tr["ema"]:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(float(tr["ema"])), use_buffers=True
        )

    # resume
    start_epoch, start_batch, global_step, best_top1 = 0, 0, 0, -1.0
    best_epoch: int | None = None
    epoch_partial = (0.0, 0)  # this rank's (loss sum, steps) of a resumed, half-done epoch
    rank_buffers: dict[str, list] = {}  # this rank's own BN stats of a half-done epoch
    resume_path, state = load_resume_state(tr["resume"], run_dir, map_location=device)
    if state is not None:
        _load_model_state(model, state["model"], resume_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state["precision"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch_in_epoch"])
        global_step, best_top1 = int(state["global_step"]), float(state["best_top1"])
        best_epoch = state.get("best_epoch")
        rank_state = state.get("ranks", {}).get(ctx.rank)
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
            epoch_partial = (rank_state["loss_sum"], rank_state["loss_count"])
            rank_buffers = rank_state.get("buffers", {})
        if main:
            _truncate_metrics(run_dir / HISTORY_FILE, global_step)
        log.info("resumed from %s at epoch %d, step %d", resume_path, start_epoch, global_step)
        del state

    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
        )
    if rank_buffers:  # after DDP, which copies rank 0's buffers to every rank when it wraps
        own = dict(model.named_buffers())
        with torch.no_grad():
            for name, values in rank_buffers.items():
                own[name].copy_(torch.tensor(values, dtype=own[name].dtype))
    train_model = compile_model(ddp_model) if tr["compile"] else ddp_model

    batch_size = int(data_cfg["batch_size"])
    if main:
        log.info(
            "model %s: %s params, %.3g GMACs/image | %s | world %d x batch %d (x%d accum) = "
            "global batch %d | %d train / %d val images, %d classes | %d steps/epoch on %s",
            cfg["model"]["name"],
            f"{n_params:,}",
            macs / 1e9,
            precision.describe(),
            ctx.world_size,
            batch_size,
            accum,
            ctx.world_size * batch_size * accum,
            len(bundle.train),
            len(bundle.val),
            len(bundle.classes),
            steps_per_epoch,
            device,
        )
    writer = _tensorboard(run_dir) if main else None
    val_names = val_predictions.image_names(bundle.val)
    metrics_path = run_dir / HISTORY_FILE
    common_state = {
        "classes": bundle.classes,
        "eval_transform": eval_transform_settings(data_cfg),
        "config": cfg,
    }

    def checkpoint(
        epoch: int, batch_in_epoch: int, name: str, partial: tuple[float, int] = (0.0, 0)
    ) -> None:
        extra: dict[str, Any] = {"loss_sum": partial[0], "loss_count": partial[1]}
        if ctx.distributed and not cfg["sync_bn"] and batch_in_epoch:
            # mid-epoch, each rank's BN running stats are still its own (averaged at epoch end)
            extra["buffers"] = {
                k: b.tolist() for k, b in unwrap(model).named_buffers() if "running_" in k
            }
        ranks = _gather_rank_state(ctx, extra)
        if not main:
            return
        save_checkpoint(
            {
                "model": unwrap(model).state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "precision": precision.state_dict(),
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "global_step": global_step,
                "best_top1": best_top1,
                "best_epoch": best_epoch,
                "ranks": ranks,
                **common_state,
            },
            ckpt_dir / name,
            keep_previous=name == "last.pt",
        )

    final_top1 = None
    imgs_seen, train_time = 0, 0.0
    channels_last = bool(tr["channels_last"])
    progress = bool(tr["progress"]) and main and sys.stderr.isatty()
    nonfinite_streak = 0
    stop = False
    last_eval: dict[str, float] = {}
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        skip_batches = start_batch if epoch == start_epoch else 0
        sampler.set_start(skip_batches * batch_size)
        _set_data_epoch(bundle.train, epoch)
        ddp_model.train()
        t_epoch = time.perf_counter()
        resumed = epoch == start_epoch and skip_batches > 0
        loss_sum = torch.full((), epoch_partial[0] if resumed else 0.0, device=device)
        loss_count = epoch_partial[1] if resumed else 0
        pending: torch.Tensor | None = None  # last step's loss, checked one step late (no sync)
        bar = _progress(train_loader, epoch, epochs, progress)
        micro = 0
        precision.zero_grad(optimizer, model)
        for batch_idx, batch in enumerate(bar, start=skip_batches):
            if batch is None:  # every image of this batch failed to decode
                continue
            x, y = batch
            x = precision.cast_input(x.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            micro += 1
            last_micro = micro % accum == 0
            sync_ctx = ddp_model.no_sync() if ctx.distributed and not last_micro else nullcontext()
            with sync_ctx:
                with precision.autocast():
                    logits = train_model(x)
                    loss = loss_fn(
                        logits,
                        y,
                        tr["loss"],
                        float(tr["label_smoothing"]),
                        float(tr["focal_gamma"]),
                    )
                precision.backward(loss / accum)
            imgs_seen += len(y)
            if not last_micro:
                continue
            precision.step(optimizer, tr["grad_clip"])
            precision.zero_grad(optimizer, model)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            global_step += 1
            if pending is not None:
                nonfinite_streak = _check_loss(
                    pending, nonfinite_streak, global_step - 1, tr, ckpt_dir
                )
            pending = loss.detach()
            loss_sum += pending
            loss_count += 1
            if main and global_step % max(1, int(tr["log_every_n_steps"])) == 0:
                lr = optimizer.param_groups[0]["lr"]
                log.info(
                    "epoch %d step %d | loss %.4f | lr %.4g | scale %g",
                    epoch,
                    global_step,
                    pending.item(),
                    lr,
                    precision.loss_scale,
                )
                if writer is not None:
                    writer.add_scalar("train/loss", pending.item(), global_step)
                    writer.add_scalar("train/lr", lr, global_step)
            every = int(tr["ckpt_every_n_steps"])
            # under DDP the check is a collective plus a host sync: every few steps, not every one
            stopping = (
                not ctx.distributed or global_step % _SIGNAL_CHECK_EVERY == 0
            ) and stop_signal.requested(ctx)
            if stopping or (every and global_step % every == 0):
                nonfinite_streak = _check_loss(pending, nonfinite_streak, global_step, tr, ckpt_dir)
                pending = None
                if nonfinite_streak == 0:
                    checkpoint(epoch, batch_idx + 1, "last.pt", (loss_sum.item(), loss_count))
            if stopping:
                raise TrainingInterrupted(
                    f"{stop_signal.received or 'a signal on another rank'}: stopped at step "
                    f"{global_step} (epoch {epoch}) after writing {ckpt_dir / 'last.pt'}; "
                    "continue with trainer.resume=auto"
                )
            if tr["max_steps"] is not None and global_step >= int(tr["max_steps"]):
                stop = True
                break
        if pending is not None:
            nonfinite_streak = _check_loss(pending, nonfinite_streak, global_step, tr, ckpt_dir)
        epoch_time = time.perf_counter() - t_epoch
        train_time += epoch_time
        done = stop or epoch == epochs - 1
        if (epoch + 1) % max(1, int(tr["eval_every"])) == 0 or done:
            if not cfg["sync_bn"]:
                du.average_buffers(model)
            eval_model = ema.module if ema is not None else ddp_model
            sink = PredictionSink()
            last_eval = evaluate(eval_model, val_loader, precision, device, channels_last, sink)
            final_top1 = last_eval["val_top1"]
            is_best = final_top1 > best_top1
            if is_best:
                best_top1, best_epoch = final_top1, epoch
            _write_predictions(run_dir, sink.gather(), val_names, bundle.classes, is_best)
            train_loss = du.all_reduce_sum(loss_sum.clone()).item() / max(
                1, loss_count * ctx.world_size
            )
            row = asdict(
                EpochRow(
                    epoch=epoch,
                    step=global_step,
                    train_loss=train_loss,
                    **last_eval,
                    lr=optimizer.param_groups[0]["lr"],
                    img_per_s=imgs_seen * ctx.world_size / max(train_time, 1e-9),
                    peak_mem_mb=peak_memory_mb(device),
                    time_s=time.perf_counter() - t_start,
                    skipped_steps=precision.skipped_steps,
                )
            )
            if main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                if writer is not None:
                    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "img_per_s"):
                        writer.add_scalar(f"epoch/{key}", row[key], global_step)
                log.info(
                    "epoch %d | train_loss %.4f | val_loss %.4f | top1 %.4f | top5 %.4f | "
                    "%.0f img/s | %.0f MB%s",
                    epoch,
                    train_loss,
                    row["val_loss"],
                    row["val_top1"],
                    row["val_top5"],
                    row["img_per_s"],
                    row["peak_mem_mb"],
                    " | new best" if is_best else "",
                )
            if is_best:
                checkpoint(epoch + 1, 0, "best.pt")
        checkpoint(epoch + 1, 0, "last.pt")
        if stop:
            break

    summary = RunSummary(
        status="completed",
        best_val_top1=best_top1 if best_top1 >= 0 else None,
        best_epoch=best_epoch,
        final_val_top1=final_top1,
        final_val_loss=last_eval.get("val_loss"),
        epochs=epoch + 1,
        steps=global_step,
        params=n_params,
        macs_per_image=macs,
        img_per_s=imgs_seen * ctx.world_size / max(train_time, 1e-9),
        peak_mem_mb=peak_memory_mb(device),
        wall_s=time.perf_counter() - t_start,
        world_size=ctx.world_size,
        skipped_steps=precision.skipped_steps,
    ).to_dict()
    if writer is not None:
        hparams = _hparams(cfg)
        writer.add_hparams(
            hparams,
            {
                "hparam/best_val_top1": summary["best_val_top1"] or 0.0,
                "hparam/img_per_s": summary["img_per_s"],
            },
            run_name=".",
        )
        writer.close()
    return summary


def _write_predictions(
    run_dir: Path, rows: dict[str, Any] | None, names: list[str], classes: list[str], best: bool
) -> None:
    """Rank 0 (the only one ``gather`` hands rows to) writes this evaluation's per-image file."""
    if rows is None:
        return
    val_predictions.write(run_dir / val_predictions.FINAL_FILE, rows, names, classes)
    if best:
        val_predictions.write(run_dir / val_predictions.BEST_FILE, rows, names, classes)


def _no_buffer_sync() -> dict[str, bool]:
    """BN stats are averaged explicitly before eval (or synced by SyncBN): DDP need not copy
    rank 0's buffers every forward. torch 2.14 renamed the flag; 2.11 (GPU hosts) has the old one.
    """
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _check_loss(
    loss: torch.Tensor, streak: int, step: int, tr: dict[str, Any], ckpt_dir: Path
) -> int:
    if math.isfinite(loss.item()):
        return 0
    streak += 1
    log.warning("non-finite loss (%s) at step %d (%d in a row)", loss.item(), step, streak)
    if streak >= int(tr["max_nonfinite_steps"]):
        last = ckpt_dir / "last.pt"
        raise NonFiniteLossError(
            f"loss was non-finite for {streak} consecutive steps, last at step {step}; training "
            f"stopped. Last good checkpoint: {last if last.is_file() else 'none written yet'}. "
            "Lower optim.lr, enable trainer.grad_clip, or use a loss-scaled amp level."
        )
    return streak


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    check_state_dict(model.state_dict(), state, f"checkpoint {path}")
    model.load_state_dict(state)


def _gather_rank_state(ctx: du.DistContext, extra: dict[str, Any]) -> dict[int, Any]:
    """Every rank's RNG state (and ``extra``), collected on rank 0: per-rank seeds differ."""
    state = {"rng": rng_state(), **extra}
    if not ctx.distributed:
        return {0: state}
    gathered: list[Any] = [None] * ctx.world_size if ctx.is_main else []
    torch.distributed.gather_object(state, gathered if ctx.is_main else None, dst=0)
    return dict(enumerate(gathered)) if ctx.is_main else {}


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop rows written after the checkpoint we resume from (a crash between the two)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= global_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):  # a half-written last line
            continue
    if len(keep) != len(lines):
        path.write_text("".join(line + "\n" for line in keep))


def _set_data_epoch(dataset: Any, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def _progress(loader: Any, epoch: int, epochs: int, enabled: bool) -> Any:
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed: no tb/ event files")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _hparams(cfg: dict[str, Any]) -> dict[str, Any]:
    keys = {
        "model": ("name", "memory_efficient"),
        "conv": ("type",),
        "act": ("name",),
        "amp": ("opt_level",),
        "init": ("name",),
        "optim": ("name", "lr"),
        "sched": ("name",),
        "data": ("name", "batch_size", "image_size"),
    }
    out: dict[str, Any] = {f"{g}.{k}": cfg[g][k] for g, ks in keys.items() for k in ks}
    out["sync_bn"] = cfg["sync_bn"]
    out["epochs"] = cfg["trainer"]["epochs"]
    return {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in out.items()}


def run_rank(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Entry of one rank: in-process, under torchrun, or spawned by ``distributed.launch``."""
    run_path = Path(run_dir)
    ctx = du.setup(cfg["dist"], cfg["trainer"]["device"])
    configure_rank(ctx.local_world_size, ctx.device, compile=bool(cfg["trainer"]["compile"]))
    setup_logging(run_path, ctx.rank)
    t0 = time.perf_counter()
    try:
        summary = fit(cfg, run_path, ctx)
    except (KeyboardInterrupt, TrainingInterrupted) as e:
        log.warning("interrupted: %s", e or "KeyboardInterrupt")
        ended = RunSummary("interrupted", error=str(e), wall_s=time.perf_counter() - t0).to_dict()
        _write_summary(run_path, ctx, ended)
        _closing_block(run_path, ctx, ended)
        raise
    except BaseException as e:
        log.error("training failed on rank %d: %s: %s", ctx.rank, type(e).__name__, e)
        error = f"{type(e).__name__}: {e}"
        ended = RunSummary("failed", error=error, wall_s=time.perf_counter() - t0).to_dict()
        _write_summary(run_path, ctx, ended)
        _closing_block(run_path, ctx, ended)
        # No destroy_process_group here: it would make the other ranks fail with "connection
        # closed" before this rank's own error is recorded, and the job would report that instead.
        raise
    du.cleanup()
    _write_summary(run_path, ctx, summary)
    _closing_block(run_path, ctx, summary)
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
def spawned_rank(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """``run_rank`` for ranks started by ``distributed.launch``: ``record`` writes the rank's
    exception to the file the launcher reads, so the parent can report the real error."""
    return run_rank(cfg, run_dir)
