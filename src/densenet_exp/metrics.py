"""The metrics files of a run, defined once: the engine writes them, ``runs`` reads them.

``metrics.jsonl`` holds one ``EpochRow`` per evaluation; ``metrics.json`` the ``RunSummary``.
A run still going (or one that died hard) has rows but no summary: ``RunSummary.from_history``
is what the rows say so far.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

HISTORY_FILE = "metrics.jsonl"
SUMMARY_FILE = "metrics.json"


class Status(str, Enum):
    """The words for how a run stands, written once: what ``metrics.json`` says (the first
    three; ``running`` while it has rows only), and how the run tables show a job."""

    completed = "completed"
    failed = "failed"  # with the error
    interrupted = "interrupted"  # SIGTERM or Ctrl-C: resumable from last.pt
    running = "running"  # no metrics.json yet
    ok = "ok"  # the run tables' word for completed
    not_started = "not started"  # a job folder with nothing in it yet

    def __str__(self) -> str:
        return self.value


@dataclass
class EpochRow:
    """One evaluation: after epoch ``epoch`` (from 0), at optimizer step ``step``."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    img_per_s: float  # training images per second so far, all ranks
    peak_mem_mb: float  # CUDA: max allocated; CPU: peak RSS
    time_s: float  # since the run started
    skipped_steps: int  # steps skipped on fp16 overflow so far


@dataclass
class RunSummary:
    """How a run ended. ``status``: completed, failed (with ``error``) or interrupted."""

    status: str = Status.completed.value
    best_val_top1: float | None = None
    best_epoch: int | None = None  # the epoch of best_val_top1, from 0 as in EpochRow
    final_val_top1: float | None = None
    final_val_loss: float | None = None
    epochs: int | None = None
    steps: int | None = None
    params: int | None = None
    macs_per_image: int | None = None  # multiply-adds of one forward at the run's image size
    img_per_s: float | None = None
    peak_mem_mb: float | None = None
    wall_s: float | None = None
    world_size: int | None = None
    skipped_steps: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: every key of a completed run; what is known otherwise."""
        out = asdict(self)
        if self.status == Status.completed:
            out.pop("error")
            return out
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_history(cls, rows: list[dict[str, Any]]) -> RunSummary:
        """The summary the rows of ``metrics.jsonl`` imply, for a run without ``metrics.json``."""
        if not rows:
            return cls(status=Status.running.value)
        last = rows[-1]
        tops = [r["val_top1"] for r in rows if "val_top1" in r]
        best = max(tops) if tops else None
        return cls(
            status=Status.running.value,
            best_val_top1=best,
            best_epoch=next((r.get("epoch") for r in rows if r.get("val_top1") == best), None),
            final_val_top1=last.get("val_top1"),
            final_val_loss=last.get("val_loss"),
            epochs=last.get("epoch", -1) + 1,
            steps=last.get("step"),
            img_per_s=last.get("img_per_s"),
            peak_mem_mb=last.get("peak_mem_mb"),
            wall_s=last.get("time_s"),
            skipped_steps=last.get("skipped_steps"),
        )


SUMMARY_KEYS = tuple(f.name for f in fields(RunSummary))
