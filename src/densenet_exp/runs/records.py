"""What a run directory holds, read back: overrides, group choices, config, metrics, predictions.

Everything here reads the files a run writes (``.hydra/``, ``metrics.json``, ``metrics.jsonl``,
``val_predictions.csv``), so it works on finished, failed and still-running jobs, and on runs from
different days.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .. import val_predictions
from ..config import NODE_GROUPS
from ..metrics import HISTORY_FILE, SUMMARY_FILE, SUMMARY_KEYS, RunSummary, Status
from ..overrides import is_configuration_key, override_key

# the group choices a run table shows: every node group, and the preset a run was made from
GROUPS = (*NODE_GROUPS, "experiment")
# the per-job table's metric columns: fields of the summary the engine writes
METRICS = (
    "best_val_top1",
    "final_val_top1",
    "final_val_loss",
    "params",
    "macs_per_image",
    "img_per_s",
    "peak_mem_mb",
    "wall_s",
    "world_size",
    "epochs",
    "steps",
)
assert set(METRICS) <= set(SUMMARY_KEYS), "METRICS must be RunSummary fields"


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
    def seed(self) -> Any:
        return self.config.get("trainer", {}).get("seed")

    @property
    def config_overrides(self) -> list[str]:
        """The run's overrides less the seed's and the presets': what names its configuration."""
        return [o for o in self.overrides if is_configuration_key(override_key(o))]

    @property
    def identity(self) -> str:
        """The configuration as a comparable string: the config less ``NOT_CONFIGURATION``.

        Runs without a saved config (still starting, or made by hand) fall back to their
        overrides, sorted, so the order they were typed in does not matter.
        """
        if self.config:
            flat = flatten(self.config)
            kept = {k: v for k, v in flat.items() if is_configuration_key(k)}
            return json.dumps(kept, sort_keys=True, default=str)
        return json.dumps(sorted(self.config_overrides))

    @cached_property
    def predictions(self) -> dict[str, bool] | None:
        """Image -> correct, from the final evaluation's ``val_predictions.csv`` (None without)."""
        path = self.path / val_predictions.FINAL_FILE
        if not path.is_file():
            return None
        return {r["image"]: r["correct"] == "1" for r in val_predictions.read(path)}

    @property
    def status(self) -> str:
        if self.summary.get("status"):
            done = self.summary["status"] == Status.completed
            return Status.ok.value if done else str(self.summary["status"])
        started = self.history or (self.path / "train.log").exists()
        return (Status.running if started else Status.not_started).value

    def metric(self, key: str) -> Any:
        """A summary value; where ``metrics.json`` lacks it, what ``metrics.jsonl`` says."""
        if self.summary.get(key) is not None:
            return self.summary[key]
        if key == "best_val_loss":  # not a summary field: the lowest val loss of any evaluation
            return min((r["val_loss"] for r in self.history if "val_loss" in r), default=None)
        if key in SUMMARY_KEYS and self.history:
            return getattr(RunSummary.from_history(self.history), key)
        return None


# libyaml's loader where PyYAML was built with it: the same safe loading, ~10x faster, which is
# most of what reading a sweep of hundreds of runs costs (each has three YAML files)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_LOADER) if path.is_file() else None


# Hydra writes hydra.runtime.choices as a block of its own in hydra.yaml; of that file's ~500
# nodes it is the only one the tools read, so it alone is parsed (the whole file where the block
# is not where Hydra puts it). Tested equal to the full parse.
_CHOICES_BLOCK = re.compile(r"^  runtime:\n(?:    .*\n)*?    choices:\n((?:      .*\n?)*)", re.M)


def _choices(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    text = path.read_text()
    block = _CHOICES_BLOCK.search(text)
    if block is not None:
        return yaml.load(textwrap.dedent(block.group(1)), Loader=_LOADER) or {}
    full = yaml.load(text, Loader=_LOADER) or {}
    return (full.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    hydra_dir = path / ".hydra"
    run = Run(path)
    run.overrides = list(_yaml(hydra_dir / "overrides.yaml") or [])
    choices = _choices(hydra_dir / "hydra.yaml")
    run.choices = {k: v for k, v in choices.items() if not k.startswith("hydra/")}
    run.config = _yaml(hydra_dir / "config.yaml") or {}
    if (path / SUMMARY_FILE).is_file():
        run.summary = json.loads((path / SUMMARY_FILE).read_text())
    if (path / HISTORY_FILE).is_file():
        for line in (path / HISTORY_FILE).read_text().splitlines():
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
    dirs |= {p.parent for p in root.glob(f"**/{SUMMARY_FILE}")}
    return [load_run(d) for d in sorted(dirs, key=_natural_key)]


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


# -- diff -----------------------------------------------------------------------------------------
def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}
