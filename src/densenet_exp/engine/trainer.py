"""What one rank's training loop shares, in one object: built once at the start of ``fit``."""

from __future__ import annotations

import time
from pathlib import Path

from .. import distributed as du
from ..config import Config
from ..tracking.run import MlflowRun
from .build import build, wrap
from .guards import LossGuard, StopSignal
from .record import RunLog
from .state import Checkpointer, restore


class Trainer:
    """The components (``c``), the training state (``st``), the model as DDP wraps it and as
    forward runs it (compiled or not), and the run's hooks: its record, checkpoints and guards."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        ctx: du.DistContext,
        stop_signal: StopSignal,
        tracked: MlflowRun | None = None,
    ) -> None:
        self.t_start = time.perf_counter()
        self.cfg, self.tr, self.ctx, self.stop_signal = cfg, cfg.trainer, ctx, stop_signal
        self.c = build(cfg, ctx)
        self.st = restore(self.c, cfg, run_dir, ctx)
        self.ddp_model, self.train_model = wrap(self.c, cfg, ctx, self.st.rank_buffers)
        self.record = RunLog(run_dir, ctx, cfg, self.c, tracked)
        self.saver = Checkpointer(self.c, cfg, ctx, run_dir / "checkpoints")
        self.guard = LossGuard(self.tr.max_nonfinite_steps, self.saver.dir)
        self.images, self.train_time = 0, 0.0  # this rank's training images and seconds so far

    @property
    def img_per_s(self) -> float:
        """Training images per second so far, all ranks."""
        return self.images * self.ctx.world_size / max(self.train_time, 1e-9)
