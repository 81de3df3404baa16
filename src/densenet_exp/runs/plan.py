"""A sweep's plan of looks, written by ``runs extend`` as ``<sweep>/extend.json``.

The plan fixes, before any extra seed is trained, the family its looks spend on, the seeds per
configuration at each look, the family-wise level, the minimum effect and the baseline; it records
how many looks were taken, so ``compare`` (or ``effects``) tests each look at the level the plan
spends there and never at a fresh alpha.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import ALPHA

PLAN_FILE = "extend.json"


@dataclass
class Plan:
    looks: list[int]  # seeds per configuration at each look; the last is --max-seeds
    min_effect: float
    baseline: str
    alpha: float = ALPHA
    pooled: bool = False  # the test is fixed with the plan, as everything else
    images: bool = False
    spending: str = "O'Brien-Fleming (Lan-DeMets), Bonferroni within a look"
    taken: int = 1  # looks taken so far; the first is the seeds the sweep had
    # what the looks spend on: "configurations" (each against the baseline, ``compare``) or
    # "effects" (the grid's main effects and interactions, ``effects``); the other is then a
    # fixed-sample look the plan does not count
    family: str = "configurations"
    reference: dict[str, str] = field(default_factory=dict)  # effects: --reference levels
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.taken >= len(self.looks)

    def look_note(self, seeds: str) -> str:
        """``; planned look 2 of 3 (seeds 3, 6, 12)``, for a report's header line."""
        looks = ", ".join(map(str, self.looks))
        return f"; planned look {self.taken} of {len(self.looks)} ({seeds} {looks})"


def load_plan(folder: str | Path) -> Plan | None:
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    try:
        return Plan(**data)
    except TypeError as e:
        raise ValueError(f"{path} is not a plan this version reads: {e}") from e


def save_plan(folder: str | Path, plan: Plan) -> None:
    """Write the plan atomically: a crash mid-write leaves the previous look's plan."""
    folder = Path(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{PLAN_FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(plan), f, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the plan is as readable as the sweep
    os.replace(tmp, folder / PLAN_FILE)
