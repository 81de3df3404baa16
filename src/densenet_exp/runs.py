"""Run-directory tools: summarize a sweep, diff two runs, rerun a run with changes.

    python -m densenet_exp.runs summarize SWEEP_DIR
    python -m densenet_exp.runs diff RUN_A RUN_B
    python -m densenet_exp.runs rerun RUN_DIR [overrides ...]

Everything here reads the files a run writes (``.hydra/``, ``metrics.json``, ``metrics.jsonl``),
so it works on finished, failed and still-running jobs, and on runs from different days.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GROUPS = ("model", "conv", "act", "amp", "init", "data", "optim", "sched", "experiment")
METRICS = (
    "best_val_top1",
    "final_val_top1",
    "final_val_loss",
    "params",
    "img_per_s",
    "peak_mem_mb",
    "wall_s",
    "world_size",
    "epochs",
    "steps",
)


@dataclass
class Run:
    path: Path
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        if self.summary.get("status"):
            return "ok" if self.summary["status"] == "completed" else str(self.summary["status"])
        return "running" if self.history or (self.path / "train.log").exists() else "not started"

    def metric(self, key: str) -> Any:
        if key in self.summary:
            return self.summary[key]
        if not self.history:
            return None
        last = self.history[-1]
        fallback = {
            "best_val_top1": max((r.get("val_top1", -1) for r in self.history), default=None),
            "final_val_top1": last.get("val_top1"),
            "final_val_loss": last.get("val_loss"),
            "img_per_s": last.get("img_per_s"),
            "peak_mem_mb": last.get("peak_mem_mb"),
            "wall_s": last.get("time_s"),
            "epochs": last.get("epoch", -1) + 1,
            "steps": last.get("step"),
        }
        return fallback.get(key)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    hydra_dir = path / ".hydra"
    run = Run(path)
    run.overrides = list(_yaml(hydra_dir / "overrides.yaml") or [])
    hydra_cfg = _yaml(hydra_dir / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    run.choices = {k: v for k, v in choices.items() if not k.startswith("hydra/")}
    run.config = _yaml(hydra_dir / "config.yaml") or {}
    if (path / "metrics.json").is_file():
        run.summary = json.loads((path / "metrics.json").read_text())
    if (path / "metrics.jsonl").is_file():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                run.history.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                break
    return run


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory under ``root`` (a sweep, or any folder of runs), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    dirs = {p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.glob("**/metrics.json")}
    return [load_run(d) for d in sorted(dirs, key=_natural_key)]


def _natural_key(p: Path) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


# -- summarize ------------------------------------------------------------------------------------
def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        error = str(run.summary.get("error", "")).strip().splitlines()
        row: dict[str, Any] = {
            "job": run.name,
            "status": run.status,
            "error": error[0] if error else "",
        }
        for group in GROUPS:
            if group in run.choices and run.choices[group] is not None:
                row[group] = run.choices[group]
        row["overrides"] = " ".join(run.overrides)
        for key in METRICS:
            row[key] = run.metric(key)
        rows.append(row)
    rows.sort(
        key=lambda r: -(r["best_val_top1"] if isinstance(r["best_val_top1"], float | int) else -1)
    )
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_summary(root: str | Path, plot: bool = True) -> list[dict[str, Any]]:
    """``summary.csv``, ``summary.md`` and ``summary.png`` in ``root``; returns the rows."""
    root = Path(root)
    runs = find_runs(root)
    rows = summary_rows(runs)
    columns = ["job", "status"]
    columns += [g for g in GROUPS if any(g in r for r in rows)]
    columns += ["overrides", *METRICS, "error"]
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows
    ]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    if plot and runs:
        _plot(runs, root / "summary.png")
    return rows


def _plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for run in runs:
        label = run.name
        if run.history:
            left.plot(
                [r["epoch"] + 1 for r in run.history],
                [r["val_top1"] for r in run.history],
                marker="o",
                markersize=3,
                label=label,
            )
        best, speed = run.metric("best_val_top1"), run.metric("img_per_s")
        if isinstance(best, float | int) and isinstance(speed, float | int):
            right.scatter(speed, best)
            right.annotate(
                label, (speed, best), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    left.set(xlabel="epoch", ylabel="val top-1", title="validation top-1 per epoch")
    right.set(xlabel="training img/s", ylabel="best val top-1", title="accuracy vs speed")
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    if any(run.history for run in runs):
        left.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- diff -----------------------------------------------------------------------------------------
def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def diff_runs(a: Run, b: Run) -> dict[str, Any]:
    groups = {
        g: (a.choices.get(g), b.choices.get(g)) for g in sorted(set(a.choices) | set(b.choices))
    }
    fa, fb = flatten(a.config), flatten(b.config)
    values = {
        k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)
    }
    metrics = {k: (a.metric(k), b.metric(k)) for k in ("status", *METRICS)}
    metrics["status"] = (a.status, b.status)
    return {
        "groups": {g: v for g, v in groups.items() if v[0] != v[1]},
        "values": values,
        "metrics": metrics,
    }


def format_diff(a: Run, b: Run, d: dict[str, Any]) -> str:
    out = [f"A: {a.path}", f"B: {b.path}", "", "group choices that differ:"]
    out += [f"  {g}: {x} -> {y}" for g, (x, y) in d["groups"].items()] or ["  (none)"]
    out += ["", "config values that differ:"]
    out += [f"  {k}: {x!r} -> {y!r}" for k, (x, y) in d["values"].items()] or ["  (none)"]
    out += ["", f"  {'metric':<16}{'A':>14}{'B':>14}{'B - A':>14}"]
    for k, (x, y) in d["metrics"].items():
        delta = ""
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool):
            delta = _cell(y - x) if not (math.isnan(x) or math.isnan(y)) else ""
        out.append(f"  {k:<16}{_cell(x):>14}{_cell(y):>14}{delta:>14}")
    return "\n".join(out)


# -- rerun ----------------------------------------------------------------------------------------
def _override_key(override: str) -> str:
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """The run's saved overrides with the new ones replacing any of the same key."""
    new_keys = {_override_key(o) for o in new}
    return [o for o in saved if _override_key(o) not in new_keys] + list(new)


def rerun(run_dir: str | Path, overrides: list[str], out_dir: str | Path | None = None) -> Path:
    """Re-compose from the primary config + the run's overrides + ``overrides`` and train.

    Composing again (not loading the saved flat config.yaml) keeps group overrides as groups:
    ``conv=dsconv`` switches the whole conv node, as on the command line.
    """
    parent = load_run(run_dir)
    if not (parent.path / ".hydra" / "overrides.yaml").is_file():
        raise FileNotFoundError(f"{parent.path} has no .hydra/overrides.yaml: not a run directory")
    # hydra.run.dir among the overrides means what it means on any command line: the run's folder
    asked = [o.split("=", 1)[1] for o in overrides if _override_key(o) == "hydra.run.dir"]
    overrides = [o for o in overrides if _override_key(o) != "hydra.run.dir"]
    if len(set(asked)) > 1:
        raise ValueError(f"hydra.run.dir given twice with different folders: {', '.join(asked)}")
    if asked and out_dir is not None and Path(asked[0]).resolve() != Path(out_dir).resolve():
        raise ValueError(
            f"--out {out_dir} and hydra.run.dir={asked[0]} name different folders: give one"
        )
    out_dir = out_dir if out_dir is not None else (asked[0] if asked else None)
    merged = merge_overrides(parent.overrides, overrides)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    new_dir = Path(out_dir) if out_dir else Path("outputs") / f"{stamp}_rerun"
    new_dir.mkdir(parents=True, exist_ok=True)
    (new_dir / "parent.txt").write_text(
        f"{parent.path.resolve()}\nnew overrides: {' '.join(overrides) or '(none)'}\n"
    )
    cmd = [sys.executable, "-m", "densenet_exp", *merged, f"hydra.run.dir={new_dir}"]
    print("rerun:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd)
    child = load_run(new_dir)
    (new_dir / "diff.txt").write_text(format_diff(parent, child, diff_runs(parent, child)) + "\n")
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return new_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m densenet_exp.runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="table (csv, md, png) of every run under a folder")
    s.add_argument("dir", type=Path)
    s.add_argument("--no-plot", action="store_true")
    d = sub.add_parser("diff", help="group choices, config values and metrics of two runs")
    d.add_argument("run_a", type=Path)
    d.add_argument("run_b", type=Path)
    d.add_argument("--json", action="store_true", help="print the diff as JSON")
    r = sub.add_parser("rerun", help="rerun a run with changed overrides, in a new directory")
    r.add_argument("run", type=Path)
    r.add_argument("overrides", nargs="*")
    r.add_argument("--out", type=Path, help="run directory of the rerun (default: outputs/...)")
    args = parser.parse_args(argv)
    try:
        if args.command == "summarize":
            rows = write_summary(args.dir, plot=not args.no_plot)
            print((args.dir / "summary.md").read_text(), end="")
            print(
                f"{len(rows)} run(s); wrote {args.dir / 'summary.csv'}, summary.md"
                + ("" if args.no_plot else ", summary.png")
            )
        elif args.command == "diff":
            a, b = load_run(args.run_a), load_run(args.run_b)
            d = diff_runs(a, b)
            print(json.dumps(d, indent=2, default=str) if args.json else format_diff(a, b, d))
        else:
            print(f"rerun written to {rerun(args.run, args.overrides, args.out)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
