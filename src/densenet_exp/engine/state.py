"""The training state, and its save and restore: what makes a resumed run the same run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed as du
from ..checkpoint import load_resume_state, rng_state, save_checkpoint, set_rng_state
from ..config import Config, to_plain
from ..data import eval_transform_settings
from ..metrics import HISTORY_FILE
from ..models.weights import check_state_dict
from .build import Components
from .helpers import unwrap

log = logging.getLogger("densenet_exp")


@dataclass
class TrainState:
    epoch: int = 0  # the epoch to (re)start
    batch_in_epoch: int = 0  # batches of that epoch already trained on
    global_step: int = 0  # optimizer steps so far
    best_top1: float = -1.0
    best_epoch: int | None = None
    partial: tuple[float, int] = (0.0, 0)  # this rank's (loss sum, steps) of a half-done epoch
    rank_buffers: dict[str, list] = field(default_factory=dict)  # its own BN stats, mid-epoch


def restore(c: Components, cfg: Config, run_dir: Path, ctx: du.DistContext) -> TrainState:
    """The state of ``trainer.resume`` (model, optimizer, schedule, RNG, ...), or a fresh one."""
    path, state = load_resume_state(cfg.trainer.resume, run_dir, map_location=ctx.device)
    if state is None:
        return TrainState()
    check_state_dict(c.model.state_dict(), state["model"], f"checkpoint {path}")
    c.model.load_state_dict(state["model"])
    c.optimizer.load_state_dict(state["optimizer"])
    c.scheduler.load_state_dict(state["scheduler"])
    c.precision.load_state_dict(state["precision"])
    if c.ema is not None and state.get("ema") is not None:
        c.ema.load_state_dict(state["ema"])
    st = TrainState(
        epoch=int(state["epoch"]),
        batch_in_epoch=int(state["batch_in_epoch"]),
        global_step=int(state["global_step"]),
        best_top1=float(state["best_top1"]),
        best_epoch=state.get("best_epoch"),
    )
    rank_state = state.get("ranks", {}).get(ctx.rank)
    if rank_state is not None:
        set_rng_state(rank_state["rng"])
        st.partial = (rank_state["loss_sum"], rank_state["loss_count"])
        st.rank_buffers = rank_state.get("buffers", {})
    if ctx.is_main:
        truncate_history(run_dir / HISTORY_FILE, st.global_step)
    log.info("resumed from %s at epoch %d, step %d", path, st.epoch, st.global_step)
    return st


class Checkpointer:
    """Writes ``last.pt`` and ``best.pt`` (rank 0), with every rank's RNG state in them."""

    def __init__(self, c: Components, cfg: Config, ctx: du.DistContext, ckpt_dir: Path) -> None:
        self.c, self.cfg, self.ctx, self.dir = c, cfg, ctx, ckpt_dir
        self.common = {
            "classes": c.bundle.classes,
            "eval_transform": eval_transform_settings(c.data_cfg),
            "config": to_plain(cfg),  # plain containers: weights_only=True loads them
        }

    def save(
        self,
        st: TrainState,
        epoch: int,
        batch_in_epoch: int,
        name: str,
        partial: tuple[float, int] = (0.0, 0),
    ) -> None:
        """A collective (every rank hands its RNG state to rank 0), then rank 0 writes."""
        c, ctx = self.c, self.ctx
        extra: dict[str, Any] = {"loss_sum": partial[0], "loss_count": partial[1]}
        if ctx.distributed and not self.cfg.sync_bn and batch_in_epoch:
            # mid-epoch, each rank's BN running stats are still its own (averaged at epoch end)
            extra["buffers"] = {
                k: b.tolist() for k, b in unwrap(c.model).named_buffers() if "running_" in k
            }
        ranks = gather_rank_state(ctx, extra)
        if not ctx.is_main:
            return
        state = {
            "model": unwrap(c.model).state_dict(),
            "ema": c.ema.state_dict() if c.ema is not None else None,
            "optimizer": c.optimizer.state_dict(),
            "scheduler": c.scheduler.state_dict(),
            "precision": c.precision.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": st.global_step,
            "best_top1": st.best_top1,
            "best_epoch": st.best_epoch,
            "ranks": ranks,
            **self.common,
        }
        save_checkpoint(state, self.dir / name, keep_previous=name == "last.pt")


def gather_rank_state(ctx: du.DistContext, extra: dict[str, Any]) -> dict[int, Any]:
    """Every rank's RNG state (and ``extra``), collected on rank 0: per-rank seeds differ."""
    state = {"rng": rng_state(), **extra}
    if not ctx.distributed:
        return {0: state}
    gathered: list[Any] = [None] * ctx.world_size if ctx.is_main else []
    torch.distributed.gather_object(state, gathered if ctx.is_main else None, dst=0)
    return dict(enumerate(gathered)) if ctx.is_main else {}


def truncate_history(path: Path, global_step: int) -> None:
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
