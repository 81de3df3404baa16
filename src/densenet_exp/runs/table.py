"""The sweep summary: one row per job, and one row per configuration (its seeds pooled)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..overrides import override_key, override_value, sweep_record
from .records import GROUPS, METRICS, Run, find_runs
from .stats import Interval, mean_ci

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


# -- per configuration ----------------------------------------------------------------------------
@dataclass
class Configuration:
    """The runs of one configuration (everything but the seed), in job order."""

    label: str
    runs: list[Run] = field(default_factory=list)
    own: list[str] = field(default_factory=list)  # the overrides that set it apart
    baseline: bool = False

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    def spread(self, key: str) -> Interval:
        bounds = (0.0, 1.0) if key.endswith("top1") else (0.0, math.inf)
        return mean_ci([r.metric(key) for r in self.ok if r.metric(key) is not None], bounds=bounds)

    def cost(self, key: str) -> float | int | None:
        values = [r.metric(key) for r in self.ok if r.metric(key) is not None]
        if not values:
            return None
        mean = sum(float(v) for v in values) / len(values)
        return int(mean) if all(isinstance(v, int) for v in values) and mean == int(mean) else mean


def configurations(runs: list[Run]) -> list[Configuration]:
    """Runs grouped by configuration, named by the overrides that differ between groups."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.identity, []).append(run)
    # name each configuration by its overrides less those every configuration shares
    shared = (
        set.intersection(*(set(g[0].config_overrides) for g in groups.values()))
        if groups
        else set()
    )
    out: list[Configuration] = []
    used: dict[str, int] = {}
    for members in groups.values():
        own = [o for o in members[0].config_overrides if o not in shared]
        label = ",".join(own) or "defaults"
        used[label] = used.get(label, 0) + 1
        if used[label] > 1:  # same overrides, another config (e.g. runs of two sweeps)
            label = f"{label} #{used[label]}"
        out.append(Configuration(label, members, own))
    mark_baseline(out, None)
    return out


def default_choices() -> dict[str, str]:
    """The primary config's default group choices (``model: densenet_bc_digits``, ...)."""
    from ..config import config_dir

    primary = yaml.safe_load((config_dir() / "config.yaml").read_text())
    choices = {}
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                choices[key.removeprefix("optional ").strip()] = value
    return choices


def is_default(override: str, choices: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether ``key=value`` is what the sweep's config had before the sweep changed it.

    ``choices`` and ``config`` come from the sweep's ``multirun.yaml`` (composed without the
    swept values), or are the primary config's defaults for runs without one.
    """
    if "=" not in override:
        return False
    key, value = override_key(override), override_value(override)
    if key in choices:
        return str(choices[key]) == value
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    try:
        return yaml.safe_load(value) == node
    except yaml.YAMLError:
        return False


def _sweep_defaults(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = sweep_record(run.path.parent)
    if cfg is None:
        return default_choices(), {}
    choices = (cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    return choices, cfg


def mark_baseline(configs: list[Configuration], name: str | None) -> Configuration | None:
    """Mark the baseline: the one named, else the one of the default choices, else the first."""
    for c in configs:
        c.baseline = False
    if not configs:
        return None
    if name is not None:
        found = [c for c in configs if c.label == name]
        if not found:
            labels = ", ".join(c.label for c in configs)
            raise ValueError(
                f"--baseline {name!r} is not a configuration here; choose from: {labels}"
            )
        chosen = found[0]
    else:

        def all_default(c: Configuration) -> bool:
            choices, config = _sweep_defaults(c.runs[0])
            return all(is_default(o, choices, config) for o in c.own)

        chosen = next((c for c in configs if all_default(c)), configs[0])
    chosen.baseline = True
    return chosen


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


def write_summary(
    root: str | Path, plot: bool = True, cost: str = "macs", runs: list[Run] | None = None
) -> list[dict[str, Any]]:
    """``summary.csv`` (per job), ``summary_by_config.csv``, ``summary.md`` and ``summary.png``.

    Returns the per-job rows.
    """
    root = Path(root)
    runs = find_runs(root) if runs is None else runs
    rows = summary_rows(runs)
    columns = ["job", "status"]
    columns += [g for g in GROUPS if any(g in r for r in rows)]
    columns += ["overrides", *METRICS, "error"]
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    configs = configurations(runs)
    by_config = config_rows(configs)
    if by_config:
        with (root / "summary_by_config.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(by_config[0]))
            writer.writeheader()
            writer.writerows(by_config)
    text = []
    if by_config:
        text += ["## By configuration (mean ± std [95% CI] over seeds)", ""]
        text += [*config_markdown(by_config), "", "## Jobs", ""]
    text += markdown(columns, rows)
    (root / "summary.md").write_text("\n".join(text) + "\n")
    if plot and runs:
        from .plots import summary_plot

        summary_plot(configs, root / "summary.png", cost=cost)
    return rows
