"""Two runs side by side (``runs diff``), and a run again with changes (``runs rerun``)."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..overrides import override_key, override_value, replace_keys
from .records import METRICS, Run, flatten, load_run
from .table import cell


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
            delta = cell(y - x) if not (math.isnan(x) or math.isnan(y)) else ""
        out.append(f"  {k:<16}{cell(x):>14}{cell(y):>14}{delta:>14}")
    return "\n".join(out)


# -- rerun ----------------------------------------------------------------------------------------
def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """The run's saved overrides with the new ones replacing any of the same key."""
    return replace_keys(saved, new)


def rerun(run_dir: str | Path, overrides: list[str], out_dir: str | Path | None = None) -> Path:
    """Re-compose from the primary config + the run's overrides + ``overrides`` and train.

    Composing again (not loading the saved flat config.yaml) keeps group overrides as groups:
    ``conv=dsconv`` switches the whole conv node, as on the command line.
    """
    parent = load_run(run_dir)
    if not (parent.path / ".hydra" / "overrides.yaml").is_file():
        raise FileNotFoundError(f"{parent.path} has no .hydra/overrides.yaml: not a run directory")
    # hydra.run.dir among the overrides means what it means on any command line: the run's folder
    asked = [override_value(o) for o in overrides if override_key(o) == "hydra.run.dir"]
    overrides = [o for o in overrides if override_key(o) != "hydra.run.dir"]
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
