"""The sweep summary as rows and markdown: one row per job, and one per configuration (its seeds
pooled). Renders only; ``report`` writes the files."""

from __future__ import annotations

from typing import Any

from .configs import Configuration
from .records import GROUPS, METRICS, Run

# metrics summarised over a configuration's seeds, with their interval
SPREAD_METRICS = ("best_val_top1", "final_val_top1", "final_val_loss", "best_val_loss")
# the cost of a choice, averaged over seeds
COST_METRICS = ("params", "macs_per_image", "img_per_s", "peak_mem_mb", "wall_s")


def cell(v: Any) -> str:
    """A table cell: floats to 4 decimals (1 past 10), None empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows
    ]
    return lines


# -- per job --------------------------------------------------------------------------------------
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


def config_rows(configs: list[Configuration]) -> list[dict[str, Any]]:
    """One row per configuration: n seeds, mean, std and 95% CI per metric, and the costs."""
    rows = []
    for c in configs:
        row: dict[str, Any] = {
            "configuration": c.label + (" (baseline)" if c.baseline else ""),
            "n": len(c.ok),
            "failed": len(c.runs) - len(c.ok),
            "seeds": " ".join(str(r.seed) for r in c.ok),
        }
        for key in SPREAD_METRICS:
            iv = c.spread(key)
            row.update(
                {f"{key}_mean": iv.mean, f"{key}_std": iv.std}
                | {f"{key}_ci_low": iv.low, f"{key}_ci_high": iv.high}
            )
        for key in COST_METRICS:
            row[key] = c.cost(key)
        rows.append(row)
    return rows


def _interval_cell(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None or mean != mean:  # NaN: no finished run
        return ""
    if row["n"] < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f} [{row[f'{key}_ci_low']:.4f}, {row[f'{key}_ci_high']:.4f}]"


def config_markdown(rows: list[dict[str, Any]]) -> list[str]:
    shown = []
    for r in rows:
        out = {"configuration": r["configuration"], "n": r["n"]}
        for key in SPREAD_METRICS:
            out[key] = _interval_cell(r, key)
        out["params"] = r["params"]
        macs = r["macs_per_image"]
        out["GMACs/image"] = None if macs is None else f"{macs / 1e9:.4g}"
        for key in ("img_per_s", "peak_mem_mb", "wall_s"):
            out[key] = r[key]
        shown.append(out)
    columns = ["configuration", "n", *SPREAD_METRICS, "params", "GMACs/image"]
    columns += ["img_per_s", "peak_mem_mb", "wall_s"]
    return markdown(columns, shown)
