"""What stops a run early: a signal (preemption, Ctrl-C) and a loss that stays non-finite."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from .. import distributed as du

log = logging.getLogger("densenet_exp")

SIGNAL_CHECK_EVERY = 10  # steps between the ranks' agreement on a received signal (DDP only)


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss stayed inf/nan for ``trainer.max_nonfinite_steps`` steps."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: the current step finished and ``last.pt`` was written."""


def preemption_signal() -> signal.Signals | None:
    """The signal submitit's jobs get before a time limit or a preemption (USR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise), when this process runs under submitit."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").removeprefix("SIG")
    return getattr(signal, f"SIG{name}", None)


# (signal, the handler our stop replaced) to run once the run is saved: submitit's own, which
# checkpoints the job's submission and requeues it (``hand_over_preemption``)
_handover: list[tuple[int, Any]] = []


def hand_over_preemption() -> None:
    """After a preemption signal stopped the run and its files are written: hand the signal to
    the handler it would have reached (submitit's requeue, which exits the process)."""
    while _handover:
        signum, handler = _handover.pop()
        if callable(handler):
            handler(signum, None)


class StopSignal:
    """First SIGTERM/SIGINT (or submitit's preemption signal): ask the loop to stop after this
    step. Second: what the signal did before (exit, or submitit's requeue)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            preempt = preemption_signal()
            for sig in (signal.SIGTERM, signal.SIGINT, *([preempt] if preempt else [])):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        log.warning("%s: stopping after this step (send it again to stop at once)", self.received)
        preempt = preemption_signal()
        if signum == preempt:
            _handover.append((signum, self._previous.get(signum)))
        for sig, handler in self._previous.items():
            # a rank can get the preemption signal twice (from SLURM and relayed by its
            # launcher): with no handler of its own before, the second must not kill it
            keep = sig == preempt and not callable(handler)
            signal.signal(sig, signal.SIG_IGN if keep else handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, ctx: du.DistContext, step: int) -> bool:
        """Whether any rank got a signal. Under DDP that is a collective plus a host sync, so
        the ranks agree every ``SIGNAL_CHECK_EVERY`` steps, not every step."""
        if not ctx.distributed:
            return self.received is not None
        if step % SIGNAL_CHECK_EVERY:
            return False
        flag = torch.tensor([1.0 if self.received else 0.0], device=ctx.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def interrupted(self, step: int, epoch: int, ckpt_dir: Path) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"{self.received or 'a signal on another rank'}: stopped at step {step} (epoch "
            f"{epoch}) after writing {ckpt_dir / 'last.pt'}; continue with trainer.resume=auto"
        )


class RelayPreemption:
    """Around launching ranks inside a submitit task: the preemption signal goes on to the ranks
    (which stop at a checkpoint, see ``StopSignal``), and submitit's own handler (checkpoint the
    submission, requeue, exit) runs only once they have stopped."""

    def __init__(self) -> None:
        self.signal = preemption_signal()
        self.previous: Any = None
        self.received = False

    def __enter__(self) -> RelayPreemption:
        if self.signal is not None and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.signal, self._relay)
        else:
            self.signal = None
        return self

    def _relay(self, signum: int, frame: Any) -> None:
        if self.received:
            return
        self.received = True
        log.warning("%s: passing it on to the ranks, then requeueing", signal.Signals(signum).name)
        for pid in _spawned_ranks():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def __exit__(self, *exc: Any) -> None:
        if self.signal is None:
            return
        signal.signal(self.signal, self.previous)
        if self.received and callable(self.previous):
            # the requeue ends this job with SIGTERM: this process is done, let it finish
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.previous(self.signal, None)


def _spawned_ranks() -> list[int]:
    """The rank processes this process started (torch elastic spawns them with multiprocessing's
    spawn: ``spawn_main`` on their command line), from Linux's /proc."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
    ranks = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
    return ranks


class LossGuard:
    """Counts consecutive non-finite losses; raises after ``limit`` of them.

    The loop hands it each step's loss one step late, so checking never waits for the device.
    """

    def __init__(self, limit: int, ckpt_dir: Path) -> None:
        self.limit, self.ckpt_dir = limit, ckpt_dir
        self.streak = 0

    def check(self, loss: torch.Tensor, step: int) -> None:
        if math.isfinite(loss.item()):
            self.streak = 0
            return
        self.streak += 1
        log.warning("non-finite loss (%s) at step %d (%d in a row)", loss.item(), step, self.streak)
        if self.streak >= self.limit:
            last = self.ckpt_dir / "last.pt"
            raise NonFiniteLossError(
                f"loss was non-finite for {self.streak} consecutive steps, last at step {step}; "
                f"training stopped. Last good checkpoint: "
                f"{last if last.is_file() else 'none written yet'}. "
                "Lower optim.lr, enable trainer.grad_clip, or use a loss-scaled amp level."
            )

    @property
    def healthy(self) -> bool:
        return self.streak == 0

    def healthy_on_all(self, ctx: du.DistContext, model: torch.nn.Module | None = None) -> bool:
        """Whether no rank's latest loss was non-finite, nor ``model``'s weights (a step with a
        finite loss can still leave inf weights behind); every rank gets the same answer."""
        bad = torch.tensor([0.0 if self.healthy else 1.0], device=ctx.device)
        if model is not None:
            for p in model.parameters():
                bad += (~torch.isfinite(p.detach())).any()
        if ctx.distributed:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        healthy = bad.item() == 0.0
        if not healthy:
            self.streak = max(self.streak, 1)  # remembered for check_final
        return healthy

    def check_final(self, val_loss: float | None, step: int, ctx: du.DistContext) -> None:
        """Training ended with a diverged model (its last losses, or its final evaluation's, not
        finite): the run failed, whatever ``limit`` had not yet counted."""
        healthy = self.healthy_on_all(ctx)
        if healthy and (val_loss is None or math.isfinite(val_loss)):
            return
        last = self.ckpt_dir / "last.pt"
        raise NonFiniteLossError(
            f"training ended with a diverged model at step {step} (final val loss {val_loss}; "
            "non-finite training losses or weights); last good checkpoint: "
            f"{last if last.is_file() else 'none written yet'}. Lower optim.lr, enable "
            "trainer.grad_clip, or use a loss-scaled amp level."
        )
