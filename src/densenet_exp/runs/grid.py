"""Configurations read as a factorial grid: the configuration keys the runs vary (the factors),
their levels in the order the sweep ran them, the reference level of each, and the cell each
configuration fills. What ``effects`` contrasts; it reads only what ``configs`` already grouped.

A grid needs two factors crossed somewhere: at least one 2x2 of two factors' levels whose four
cells all have a finished run. Otherwise (one key, configurations varying one key at a time, an
Optuna search) ``why_not`` says so in one line and ``compare`` is the answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..overrides import override_key
from .configs import Configuration, is_default, sweep_defaults
from .records import Run, flatten

Cell = tuple[str, ...]  # one level per factor, in the grid's factor order


@dataclass
class Grid:
    factors: list[str] = field(default_factory=list)
    levels: list[list[str]] = field(default_factory=list)  # per factor, in the sweep's order
    reference: list[str] = field(default_factory=list)  # per factor
    cells: dict[Cell, Configuration] = field(default_factory=dict)
    why_not: str = ""  # one line where the runs are no factorial grid

    def filled(self, cell: Cell) -> bool:
        """Whether the cell has a finished run (a missing or all-failed cell is not filled)."""
        config = self.cells.get(cell)
        return config is not None and bool(config.ok)

    def name(self, cell: Cell) -> str:
        return ",".join(f"{f}={v}" for f, v in zip(self.factors, cell))

    def combos(self, exclude: tuple[int, ...]) -> list[dict[int, str]]:
        """Every combination of levels of the factors not in ``exclude`` ({index: level})."""
        others = [i for i in range(len(self.factors)) if i not in exclude]
        return [
            dict(zip(others, values))
            for values in itertools.product(*(self.levels[i] for i in others))
        ]

    def cell(self, fixed: dict[int, str]) -> Cell:
        return tuple(fixed[i] for i in range(len(self.factors)))


def factor_value(run: Run, key: str) -> str:
    """The value of a configuration key in a run: its group choice, else its config value."""
    if key in run.choices:
        return str(run.choices[key])
    value: Any = flatten(run.config).get(key, "(unset)")
    return "null" if value is None else str(value)


def _swept_keys(configs: list[Configuration]) -> list[str]:
    """The keys any configuration's overrides set, in the order the first ones name them."""
    keys: list[str] = []
    for c in configs:
        for o in c.runs[0].config_overrides:
            key = override_key(o)
            if key not in keys:
                keys.append(key)
    return keys


def grid_of(configs: list[Configuration], reference: dict[str, str] | None = None) -> Grid:
    """The grid the configurations form (``why_not`` set where they form none).

    ``reference`` ({key: value}, from ``--reference KEY=VALUE``) picks a factor's reference level;
    the others' is the sweep's default (as ``compare`` picks its baseline), else the level of the
    baseline configuration.
    """
    reference = dict(reference or {})
    grid = Grid()
    # the sweep's record, read once: its sweeper, and its defaults for the reference levels
    choices, record = sweep_defaults(configs[0].runs[0]) if configs else ({}, {})
    if "optuna" in str(choices.get("hydra/sweeper", "")):
        grid.why_not = (
            "an Optuna search, not a grid: no factorial effects (`runs compare` as before)"
        )
        return grid
    keys = _swept_keys(configs)
    values = {id(c): {k: factor_value(c.runs[0], k) for k in keys} for c in configs}
    factors = [k for k in keys if len({values[id(c)][k] for c in configs}) > 1]
    for key in reference:
        if key not in factors:
            raise ValueError(
                f"--reference {key}=...: {key!r} is not a factor here; factors: "
                + (", ".join(factors) or "none")
            )
    grid.factors = factors
    grid.levels = [list(dict.fromkeys(values[id(c)][k] for c in configs)) for k in factors]
    for c in configs:
        cell = tuple(values[id(c)][k] for k in factors)
        if cell in grid.cells:
            grid.why_not = (
                f"{grid.cells[cell].label} and {c.label} have the same levels of "
                f"{', '.join(factors)} but differ elsewhere: no factorial grid"
            )
            return grid
        grid.cells[cell] = c
    defaults = (choices, record)
    grid.reference = [
        _reference(grid, i, reference, configs, defaults) for i in range(len(factors))
    ]
    if len(factors) < 2:
        grid.why_not = (
            f"one configuration key varies ({factors[0]}): no factorial grid; `runs compare` "
            "answers it"
            if factors
            else "no configuration key varies: nothing to contrast"
        )
    elif not any(_crossed(grid, i, j) for i, j in itertools.combinations(range(len(factors)), 2)):
        grid.why_not = (
            f"the runs vary {', '.join(factors)} one at a time, no two crossed (no 2x2 of "
            "finished cells): no factorial grid; `runs compare` answers it"
        )
    return grid


def _reference(
    grid: Grid,
    i: int,
    named: dict[str, str],
    configs: list[Configuration],
    defaults: tuple[dict[str, Any], dict[str, Any]],
) -> str:
    key, levels = grid.factors[i], grid.levels[i]
    if key in named:
        if named[key] not in levels:
            raise ValueError(
                f"--reference {key}={named[key]}: not a level of {key}; levels: "
                + ", ".join(levels)
            )
        return named[key]
    for level in levels:
        if is_default(f"{key}={level}", *defaults):
            return level
    base = next((c for c in configs if c.baseline), configs[0])
    return factor_value(base.runs[0], key)


def _crossed(grid: Grid, i: int, j: int) -> bool:
    """Whether some 2x2 of factors i and j (at any levels of the rest) has four filled cells."""
    for rest in grid.combos((i, j)):
        for a, b in itertools.combinations(grid.levels[i], 2):
            for c, d in itertools.combinations(grid.levels[j], 2):
                corners = [{**rest, i: x, j: y} for x in (a, b) for y in (c, d)]
                if all(grid.filled(grid.cell(k)) for k in corners):
                    return True
    return False
