"""The block a run prints when it ends: what happened, where it is, and what to type next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from .metrics import Status
from .overrides import override_key

# keys the resume command sets itself; the run's own values of them are dropped
_RESUME_KEYS = ("trainer.resume", "hydra.run.dir")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def resume_command(run_dir: Path, extra: tuple[str, ...] = ()) -> str:
    """The command that continues this run in its own folder from its ``last.pt``.

    The run's own overrides (``.hydra/overrides.yaml``) come first, so it composes the same
    config; ``extra`` (e.g. ``trainer.epochs=MORE``) replaces any of the same key.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    saved = [str(o) for o in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []
    drop = {*_RESUME_KEYS, *(override_key(o) for o in extra)}
    args = [o for o in saved if override_key(o) not in drop]
    args += [*extra, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    return " ".join(["python -m densenet_exp", *(shlex.quote(a) for a in args)])


def closing_block(run_dir: Path, summary: dict[str, Any]) -> str:
    """A few lines for the end of the log: status, best top-1 and its epoch, time, next steps."""
    run_dir = Path(run_dir).resolve()
    status = summary.get("status", Status.completed)
    wall = _duration(float(summary.get("wall_s") or 0.0))
    last = run_dir / "checkpoints" / "last.pt"
    best_ckpt = run_dir / "checkpoints" / "best.pt"
    lines = [""]
    if status == Status.completed:
        best, epoch = summary.get("best_val_top1"), summary.get("best_epoch")
        final = summary.get("final_val_top1")
        headline = f"run completed in {wall}"
        if best is not None:
            headline += f": best val top-1 {best:.4f}"
            headline += f" at epoch {epoch}" if epoch is not None else ""
            headline += f" (final {final:.4f})" if final is not None else ""
        lines += [
            headline,
            f"  run directory: {run_dir}",
            "  next:",
            f"    predict:  python -m densenet_exp.predict "
            f"checkpoint={shlex.quote(str(best_ckpt))} input=IMAGES",
            f"    continue: {resume_command(run_dir, ('trainer.epochs=MORE',))}",
            f"    compare:  python -m densenet_exp.runs diff {shlex.quote(str(run_dir))} OTHER_RUN",
        ]
    else:
        error = str(summary.get("error") or "").strip().splitlines()
        lines += [
            f"run {status} after {wall}" + (f": {error[0]}" if error else ""),
            f"  run directory: {run_dir}",
            f"  log: {run_dir / 'train.log'}",
            f"  last checkpoint: {last if last.is_file() else 'none written'}",
        ]
        if last.is_file():
            lines.append(f"  resume: {resume_command(run_dir)}")
    return "\n".join(lines)
