"""The contrasts of a grid's cell means that ``effects`` tests: main effects, interactions of
every pair of factors and simple effects, each as coefficients over the cells it uses, averaged over
the level combinations of the other factors whose cells all have finished runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import stats
from .grid import Cell, Grid

MAIN, INTERACTION, SIMPLE = "main", "interaction", "simple"


@dataclass
class Effect:
    kind: str  # main, interaction or simple
    factor: str
    level: str
    reference: str
    other: str = ""  # interaction: the second factor; simple: the factor it is taken at
    other_level: str = ""
    other_reference: str = ""
    coefs: dict[Cell, float] = field(default_factory=dict)
    averaged: str = ""  # what the contrast averages over, in words
    estimate: float = math.nan
    se: float = math.nan
    df: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    adjusted_p: float = math.nan
    verdict: str = ""
    min_effect: float = math.nan
    detectable: float = math.nan
    seeds_needed: int | None = None
    seeds: int = 0  # seeds per cell the test used (the fewest of its cells)
    dominant: str = ""  # the cell whose spread makes up most of the contrast's variance
    dominant_share: float = math.nan
    test: str = ""
    look: int = 0
    # main effects: each factor whose interaction with it is not shown small -> shown not small
    changed_by: dict[str, bool] = field(default_factory=dict)
    note: str = ""
    _test: stats.TTest | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        own = f"{self.factor}={self.level}"
        if self.kind == INTERACTION:
            return f"{own} x {self.other}={self.other_level}"
        if self.kind == SIMPLE:
            return f"{own} at {self.other}={self.other_level}"
        return own

    @property
    def changed_text(self) -> str:
        """``act changes it`` (an interaction found), ``act may change it`` (not shown small)."""
        return "; ".join(
            f"{f} changes it" if found else f"{f} may change it"
            for f, found in self.changed_by.items()
        )

    @property
    def bound(self) -> float:
        """The largest |value| the contrast can take: sum of its positive coefficients (1 for
        a difference of two accuracies, 2 for an interaction)."""
        return sum(c for c in self.coefs.values() if c > 0)


# -- building them ---------------------------------------------------------------------------------
def _average(
    grid: Grid, fixed: dict[int, str], signs: list[tuple[dict[int, str], float]], free: tuple
) -> tuple[dict[Cell, float], str]:
    """Coefficients of sum(sign * cell(fixed + corner + rest)) averaged over every combination
    ``rest`` of the factors not in ``free`` whose cells are all filled, and the words for it."""
    combos = grid.combos(free)
    kept = [
        rest
        for rest in combos
        if all(grid.filled(grid.cell({**rest, **fixed, **corner})) for corner, _ in signs)
    ]
    coefs: dict[Cell, float] = {}
    for rest in kept:
        for corner, sign in signs:
            cell = grid.cell({**rest, **fixed, **corner})
            coefs[cell] = coefs.get(cell, 0.0) + sign / len(kept)
    others = [i for i in range(len(grid.factors)) if i not in free]
    words = " x ".join(f"{grid.factors[i]} ({', '.join(grid.levels[i])})" for i in others)
    if len(kept) < len(combos):
        missing = dict.fromkeys(
            grid.name(cell)
            for rest in combos
            if rest not in kept
            for corner, _ in signs
            if not grid.filled(cell := grid.cell({**rest, **fixed, **corner}))
        )
        gone = f"no finished run in {', '.join(missing)}"
        shown = "; ".join(
            ", ".join(f"{grid.factors[i]}={rest[i]}" for i in others) for rest in kept
        )
        words = f"only {shown} of {words}: {gone}" if kept else gone
    return {c: v for c, v in coefs.items() if v != 0}, words


def contrasts(grid: Grid) -> list[Effect]:
    """Main effects, interactions of every pair of factors, and simple effects, in that order."""
    main, inter, simple = [], [], []
    n = len(grid.factors)
    for i in range(n):
        ref = grid.reference[i]
        for level in grid.levels[i]:
            if level == ref:
                continue
            coefs, words = _average(grid, {}, [({i: level}, 1.0), ({i: ref}, -1.0)], (i,))
            main.append(Effect(MAIN, grid.factors[i], level, ref, coefs=coefs, averaged=words))
            for j in range(n):
                if j == i:
                    continue
                for at in grid.levels[j]:
                    signs = [({i: level, j: at}, 1.0), ({i: ref, j: at}, -1.0)]
                    coefs, words = _average(grid, {}, signs, (i, j))
                    simple.append(
                        Effect(
                            SIMPLE, grid.factors[i], level, ref, grid.factors[j], at,
                            grid.reference[j], coefs, words,
                        )
                    )  # fmt: skip
    for i in range(n):
        for j in range(i + 1, n):
            ri, rj = grid.reference[i], grid.reference[j]
            for a in (x for x in grid.levels[i] if x != ri):
                for b in (y for y in grid.levels[j] if y != rj):
                    signs = [
                        ({i: a, j: b}, 1.0),
                        ({i: ri, j: b}, -1.0),
                        ({i: a, j: rj}, -1.0),
                        ({i: ri, j: rj}, 1.0),
                    ]
                    coefs, words = _average(grid, {}, signs, (i, j))
                    inter.append(
                        Effect(
                            INTERACTION, grid.factors[i], a, ri, grid.factors[j], b, rj,
                            coefs, words,
                        )
                    )  # fmt: skip
    return main + inter + simple
