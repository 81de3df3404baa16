"""Two runs side by side (``runs diff``), and a run again with changes (``runs rerun``)."""

from __future__ import annotations

import math
from typing import Any

from ..overrides import replace_keys
from .records import METRICS, Run, flatten
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
