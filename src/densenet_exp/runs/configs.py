"""Runs grouped into configurations (everything but the seed), and which one is the baseline.

What the summary, the comparison and the plots all read; the renderers (``table``, ``plots``) and
the writers (``report``) sit above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config import config_dir
from ..metrics import Status
from ..overrides import override_key, override_value, sweep_record
from .records import Run
from .stats import Interval, mean_ci


@dataclass
class Configuration:
    """The runs of one configuration (everything but the seed), in job order."""

    label: str
    runs: list[Run] = field(default_factory=list)
    own: list[str] = field(default_factory=list)  # the overrides that set it apart
    baseline: bool = False

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == Status.ok]

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


def sweep_defaults(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
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
            choices, config = sweep_defaults(c.runs[0])
            return all(is_default(o, choices, config) for o in c.own)

        chosen = next((c for c in configs if all_default(c)), configs[0])
    chosen.baseline = True
    return chosen
