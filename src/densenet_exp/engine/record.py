"""What rank 0 records as a run goes: the log lines, metrics.jsonl, predictions, and the loggers
the ``logger`` group turns on (TensorBoard here; MLflow in ``tracking``)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import distributed as du
from .. import val_predictions
from ..config import Config
from ..metrics import HISTORY_FILE, EpochRow
from ..models import implementation_of
from ..tracking.run import MlflowRun
from .build import Components

log = logging.getLogger("densenet_exp")


class RunLog:
    """The run's records. Every rank holds one; only rank 0's writes anything."""

    def __init__(
        self,
        run_dir: Path,
        ctx: du.DistContext,
        cfg: Config,
        c: Components,
        tracked: MlflowRun | None = None,
    ):
        self.run_dir, self.main, self.cfg, self.c = run_dir, ctx.is_main, cfg, c
        use_tb = self.main and cfg.logger.tensorboard.enabled
        self.writer = _tensorboard(run_dir) if use_tb else None
        self.tracked = tracked
        self.val_names = val_predictions.image_names(c.bundle.val)
        if self.main:
            self._start_line(ctx)

    def _start_line(self, ctx: du.DistContext) -> None:
        c = self.c
        batch = c.data_cfg.batch_size
        log.info(
            "model %s (impl=%s: %s): %s params, %.3g GMACs/image | %s | world %d x batch %d "
            "(x%d accum) = global batch %d | %d train / %d val images, %d classes | "
            "%d steps/epoch on %s",
            self.cfg.model.name,
            implementation_of(c.model),
            type(c.model).__module__.removeprefix("densenet_exp.").replace(".", "/") + ".py",
            f"{c.n_params:,}",
            c.macs / 1e9,
            c.precision.describe(),
            ctx.world_size,
            batch,
            c.accum,
            ctx.world_size * batch * c.accum,
            len(c.bundle.train),
            len(c.bundle.val),
            len(c.bundle.classes),
            c.steps_per_epoch,
            ctx.device,
        )

    def step(self, epoch: int, step: int, loss: float, lr: float, scale: float) -> None:
        if not self.main:
            return
        log.info("epoch %d step %d | loss %.4f | lr %.4g | scale %g", epoch, step, loss, lr, scale)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        if self.tracked is not None:
            self.tracked.step(step, loss)

    def evaluation(self, row: EpochRow, best: bool, predictions: dict[str, Any] | None) -> None:
        """One evaluation: its row, its TensorBoard scalars, its log line, its predictions."""
        if predictions is not None:  # rank 0 only: gather hands the rows to rank 0
            classes = self.c.bundle.classes
            files = [val_predictions.FINAL_FILE] + ([val_predictions.BEST_FILE] if best else [])
            for name in files:
                val_predictions.write(self.run_dir / name, predictions, self.val_names, classes)
        if not self.main:
            return
        with (self.run_dir / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
        if self.writer is not None:
            for key in ("train_loss", "val_loss", "val_top1", "val_top5", "img_per_s"):
                self.writer.add_scalar(f"epoch/{key}", getattr(row, key), row.step)
        if self.tracked is not None:
            self.tracked.evaluation(row)
        log.info(
            "epoch %d | train_loss %.4f | val_loss %.4f | top1 %.4f | top5 %.4f | "
            "%.0f img/s | %.0f MB%s",
            row.epoch,
            row.train_loss,
            row.val_loss,
            row.val_top1,
            row.val_top5,
            row.img_per_s,
            row.peak_mem_mb,
            " | new best" if best else "",
        )

    def close(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self.writer.add_hparams(
            hparams(self.cfg),
            {
                "hparam/best_val_top1": summary["best_val_top1"] or 0.0,
                "hparam/img_per_s": summary["img_per_s"],
            },
            run_name=".",
        )
        self.writer.close()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed: no tb/ event files")
        return None
    return SummaryWriter(str(run_dir / "tb"))


def hparams(cfg: Config) -> dict[str, Any]:
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
    out: dict[str, Any] = {
        f"{g}.{k}": getattr(getattr(cfg, g), k) for g, ks in keys.items() for k in ks
    }
    out["sync_bn"] = cfg.sync_bn
    out["epochs"] = cfg.trainer.epochs
    # TensorBoard takes numbers, strings and bools; the enums become their values
    plain = (int, float, bool)
    return {k: (v if isinstance(v, plain) else str(v)) for k, v in out.items()}
