"""The block a run prints when it ends: what happened, where it is, and what to type next."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import yaml

from .metrics import Status
from .overrides import override_key, override_value

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


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def resume_command(run_dir: Path, extra: tuple[str, ...] = ()) -> str:
    """The command that continues this run in its own folder from its ``last.pt``.

    The run's own overrides (``.hydra/overrides.yaml``) come first, so it composes the same
    config; ``extra`` (e.g. ``trainer.epochs=MORE``) replaces any of the same key. A run made on
    SLURM resumes there: through the submitit launcher it came from (same launcher settings, same
    folder), or with ``srun`` on as many nodes; a plain command would fail outside the job
    (``dist.rdzv_endpoint=slurm``) or, for one node, train on the login node.
    """
    saved = [str(o) for o in (_yaml(run_dir / ".hydra" / "overrides.yaml") or [])]
    drop = {*_RESUME_KEYS, *(override_key(o) for o in extra)}
    args = [o for o in saved if override_key(o) not in drop] + list(extra)
    hydra_node = (_yaml(run_dir / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
    launcher = [
        str(o)
        for o in (hydra_node.get("overrides", {}).get("hydra") or [])
        if override_key(str(o)).startswith(("hydra/launcher", "hydra.launcher."))
    ]
    if any("submitit_slurm" in o for o in launcher):
        args = [
            "-m",
            *launcher,
            *args,
            f"hydra.sweep.dir={run_dir.parent}",
            f"hydra.sweep.subdir='{run_dir.name}'",  # quoted for Hydra: names hold = and ,
            "trainer.resume=auto",
        ]
        return _command("python -m densenet_exp", args)
    args += [f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    nodes = next((override_value(o) for o in saved if override_key(o) == "dist.nnodes"), "1")
    # the block is printed inside the job: SLURM's variables say where the run trained
    if "dist.rdzv_endpoint=slurm" in saved or os.environ.get("SLURM_JOB_ID"):
        return _command(f"srun --nodes={nodes} --ntasks-per-node=1 python -m densenet_exp", args)
    return _command("python -m densenet_exp", args)


def _command(program: str, args: list[str]) -> str:
    return " ".join([program, *(shlex.quote(a) for a in args)])


def in_sweep(run_dir: Path) -> bool:
    """Whether the run is a job of a sweep (Hydra's record says MULTIRUN)."""
    hydra_node = (_yaml(Path(run_dir) / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
    return str(hydra_node.get("mode", "")) == "MULTIRUN"


def job_line(run_dir: Path, summary: dict[str, Any]) -> str:
    """A sweep job's closing line: job, status, top-1, wall time, folder. The sweep's own end
    says what to type next, so that 72 jobs do not bury the sweep's progress under 6 lines each."""
    status = summary.get("status", Status.completed)
    wall = _duration(float(summary.get("wall_s") or 0.0))
    final = summary.get("final_val_top1")
    text = f"job {run_dir.name}: {status}"
    if status == Status.completed and final is not None:
        text += f", final val top-1 {final:.4f} (best {summary.get('best_val_top1'):.4f})"
    elif status != Status.completed:
        error = str(summary.get("error") or "").strip().splitlines()
        text += f" ({error[0]})" if error else ""
    return f"{text}, {wall}, {run_dir}"


def sweep_next_steps(sweep_dir: Path, grid: bool, failed: list[str], task: list[str]) -> str:
    """What to type when a sweep ends: its tables, more seeds, and how to finish it (failed
    jobs)."""
    sweep = shlex.quote(str(sweep_dir))
    runs = "python -m densenet_exp.runs"
    lines = [
        "next:",
        f"  summary:  {runs} summarize {sweep}",
        f"  compare:  {runs} compare {sweep} [--baseline CONFIG]",
    ]
    if grid:
        lines.append(f"  effects:  {runs} effects {sweep} [--reference KEY=VALUE ...]")
    by = " --by effects" if grid else ""
    lines.append(f"  extend:   {runs} extend {sweep}{by} --max-seeds N")
    if failed:
        again = [o for o in task if override_key(o) not in ("trainer.resume", "hydra.sweep.dir")]
        args = ["-m", *again, f"hydra.sweep.dir={sweep_dir}", "trainer.resume=auto"]
        lines.append(f"  resume:   {_command('python -m densenet_exp', args)}")
    return "\n".join(lines)


def closing_block(run_dir: Path, summary: dict[str, Any]) -> str:
    """A few lines for the end of the log: status, best top-1 and its epoch, time, next steps;
    one line for a job of a sweep."""
    run_dir = Path(run_dir).resolve()
    if in_sweep(run_dir):
        return job_line(run_dir, summary)
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
