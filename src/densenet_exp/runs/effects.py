"""``runs effects``: what each factor of a grid does, averaged over the others, and whether two
factors interact; one family with verdicts whose error rate is what it says.

From the cells' seeds (a cell is a configuration; its seeds' final top-1 are the replicates):

- a **main effect** of level l of factor F is the mean over the other factors' level combinations
  of cell(l, ...) - cell(reference, ...), a contrast L = sum c_i * mean_i of cell means;
- an **interaction** of F=a and G=b is cell(a, b) - cell(ref, b) - cell(a, ref) + cell(ref, ref),
  averaged over the remaining factors: how much F's effect changes from G's reference to b;
- a **simple effect** of F=l at G=g is F's effect at that one level of G: listed under a main
  effect whose interactions are not shown small, because there the average may hide them. Simple
  effects describe; they carry no verdict and spend none of the family's 5%.

Each contrast's SE is sqrt(sum c_i^2 s_i^2 / n_i) with the Welch-Satterthwaite df (``stats.
contrast``; for two cells it is Welch's test, as ``compare`` runs it). Holm runs over both
directions of every main effect and interaction (``verdicts``), the intervals are compatible with
it, and equivalence within ±D is read off them, as in ``compare``. A ragged grid uses the cells
it has: a contrast averages over the combinations whose cells all have finished runs and says
which it left out; one whose cell has one seed is not tested (its spread is unknown) unless the
seed variance is pooled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import power, stats
from .compare import Options, default_min_effect, seeded, top1
from .configs import Configuration
from .contrasts import INTERACTION, MAIN, SIMPLE, Effect, contrasts
from .grid import Cell, Grid, grid_of
from .plan import Plan
from .verdicts import Decision, Verdict, holm_decisions, look_alphas, look_decisions


@dataclass
class Effects:
    grid: Grid
    rows: list[Effect]  # main effects and interactions (the family), then simple effects
    min_effect: float
    alpha: float
    plan: Plan | None = None

    @property
    def family(self) -> list[Effect]:
        return [r for r in self.rows if r.kind != SIMPLE]


# -- the tests -------------------------------------------------------------------------------------
def _values(grid: Grid, cell: Cell, k: int | None) -> np.ndarray:
    return top1(seeded(grid.cells[cell])[:k])


def _test(
    row: Effect, grid: Grid, k: int | None, options: Options, pool: tuple[float, int]
) -> stats.TTest | None:
    """The contrast's t-test on every cell's first ``k`` seeds; None with ``row.note`` why."""
    row.note = ""
    if not row.coefs:
        row.note = "not tested: " + (row.averaged or "no filled cells")
        return None
    cells = list(row.coefs)
    values = [_values(grid, c, k) for c in cells]
    coefs = [row.coefs[c] for c in cells]
    row.seeds = min(v.size for v in values)
    row.estimate = float(sum(c * v.mean() for c, v in zip(coefs, values)))
    if options.pooled:
        test = stats.pooled_contrast(values, coefs, *pool)
    else:
        test = stats.contrast(values, coefs)
    if test is None:
        single = [grid.name(c) for c, v in zip(cells, values) if v.size < 2]
        spread = "its seed spread is" if len(single) == 1 else "their seed spreads are"
        row.note = (
            f"not tested: one seed in {', '.join(single)}, {spread} unknown "
            "(--pooled borrows the sweep's)"
            if single
            else "not tested: no cell's seeds vary, no spread to test against"
        )
        return None
    parts = [c * c * v.var(ddof=1) / v.size if v.size > 1 else 0.0 for c, v in zip(coefs, values)]
    if sum(parts) > 0:
        top = int(np.argmax(parts))
        row.dominant, row.dominant_share = grid.name(cells[top]), parts[top] / sum(parts)
    row.se, row.df, row.p_value = test.se, test.df, test.p_two
    row.test = f"{test.method}, {row.seeds}+ seeds a cell"
    row._test = test
    return test


def _apply(row: Effect, decision: Decision) -> None:
    row.low = max(decision.low, -row.bound)
    row.high = min(decision.high, row.bound)
    row.adjusted_p, row.verdict = decision.p_adjusted, decision.verdict.value
    if decision.verdict == Verdict.undecided and row._test is not None:
        row.detectable = power.detectable(row._test, decision.level)


def _pool(grid: Grid, k: int | None) -> tuple[float, int]:
    return stats.pooled_sd([_values(grid, c, k) for c in grid.cells if grid.filled(c)])


def _fixed(result: Effects, options: Options) -> float:
    """One fixed-sample family; returns the one-sided level of the bounds Holm left open."""
    pool = _pool(result.grid, None) if options.pooled else (math.nan, 0)
    tested = []
    for row in result.family:
        test = _test(row, result.grid, None, options, pool)
        if test is not None:
            tested.append((row, test))
    decisions = holm_decisions([t for _, t in tested], result.alpha, result.min_effect)
    for (row, _), decision in zip(tested, decisions):
        _apply(row, decision)
    return decisions[0].level if decisions else result.alpha / max(1, 2 * len(result.family))


def _sequential(result: Effects, options: Options, plan: Plan) -> float:
    """Each effect through the plan's looks, on every cell's first n seeds, until decided."""
    alphas = look_alphas(plan.looks, plan.alpha)
    size = max(1, len(result.family))
    level = plan.alpha / (2 * size)
    for j, k in enumerate(plan.looks[: plan.taken]):
        pool = _pool(result.grid, k) if options.pooled else (math.nan, 0)
        level = alphas[j] / (2 * size)
        for row in result.family:
            if row.verdict and row.verdict != Verdict.undecided:
                continue  # decided at an earlier look: that verdict stands
            short = [c for c in row.coefs if len(result.grid.cells[c].ok) < k]
            if short and j > 0:
                row.note = f"look {j + 1} needs {k} seeds in every cell"
                continue
            test = _test(row, result.grid, k, options, pool)
            if test is None:
                continue
            _apply(row, look_decisions([test], level, plan.alpha, plan.min_effect)[0])
            row.look = j + 1
    return level


def _describe(row: Effect, grid: Grid, options: Options, level: float, pool: tuple) -> None:
    """A simple effect: estimate and an interval at the family's open level, no verdict."""
    test = _test(row, grid, None, options, pool)
    if test is None:
        return
    margin = test.margin(level)
    row.low = max(test.delta - margin, -row.bound)
    row.high = min(test.delta + margin, row.bound)


def _plan_seeds(row: Effect, grid: Grid, options: Options, size: int, pool: tuple) -> None:
    """Seeds in every cell that would decide ±D for an open effect with 80% power, planning with
    an upper confidence bound on the contrast's variance (as ``compare`` plans its seed SD)."""
    if row._test is None:
        return
    level = options.alpha / (2 * size)
    if options.pooled:
        sd, df = pool
        weights = [c * c * sd * sd for c in row.coefs.values()]
    else:
        weights = [
            c * c * float(_values(grid, cell, None).var(ddof=1)) for cell, c in row.coefs.items()
        ]
        df = row._test.df
    inflate = power.sd_upper(1.0, df) ** 2
    row.seeds_needed = power.seeds_per_cell([w * inflate for w in weights], row.min_effect, level)


def effects(
    configs: list[Configuration],
    reference: dict[str, str] | None = None,
    options: Options | None = None,
    plan: Plan | None = None,
) -> Effects:
    """The grid's effects (see the module's docstring); ``why_not`` on the grid where none."""
    options = options or Options()
    if plan is not None and plan.family != "effects":
        plan = None  # a plan that spends on configurations: this is a fixed-sample look
    if plan is not None:  # the plan fixed the test, the min effect and the references
        if options.min_effect not in (None, plan.min_effect):
            raise ValueError(
                f"this sweep's plan fixed the min effect at {plan.min_effect}, "
                f"not {options.min_effect}"
            )
        if reference and reference != plan.reference:
            raise ValueError(
                f"this sweep's plan fixed the references {plan.reference or '(defaults)'}"
            )
        options = Options(plan.alpha, plan.min_effect, plan.pooled, plan.images)
        reference = plan.reference
    grid = grid_of(configs, reference)
    if grid.why_not:
        return Effects(grid, [], math.nan, options.alpha, plan)
    base = grid.cells.get(tuple(grid.reference))
    d = options.min_effect
    if d is None:
        d = default_min_effect(base) if base is not None and base.ok else math.nan
    if math.isnan(d):  # the reference cell never finished: a tenth of the grid's mean errors
        everything = [r for c in grid.cells.values() for r in c.ok]
        d = 0.1 * (1.0 - float(top1(everything).mean()))
    result = Effects(grid, contrasts(grid), float(d), options.alpha, plan)
    for row in result.rows:
        row.min_effect = result.min_effect
    level = _sequential(result, options, plan) if plan else _fixed(result, options)
    pool = _pool(grid, None) if options.pooled else (math.nan, 0)
    for row in result.rows:
        if row.kind == SIMPLE:
            _describe(row, grid, options, level, pool)
            continue
        row.verdict = row.verdict or Verdict.not_tested.value
        if row.verdict == Verdict.undecided:
            _plan_seeds(row, grid, options, len(result.family), pool)
    _mark_interactions(result)
    return result


def _mark_interactions(result: Effects) -> None:
    """A main effect is an average that may hide an interaction: note each factor whose
    interaction with it is not shown small (any verdict but equivalent)."""
    for row in result.rows:
        if row.kind != MAIN:
            continue
        for r in result.rows:
            if r.kind != INTERACTION or r.verdict == Verdict.equivalent:
                continue
            if (r.factor, r.level) == (row.factor, row.level):
                other = r.other
            elif (r.other, r.other_level) == (row.factor, row.level):
                other = r.factor
            else:
                continue
            found = r.verdict in (Verdict.better, Verdict.worse)
            row.changed_by[other] = row.changed_by.get(other, False) or found


def simple_effects_of(result: Effects, row: Effect) -> list[Effect]:
    """The simple effects listed under a main effect: at each level of every factor that may
    change it."""
    return [
        r
        for r in result.rows
        if r.kind == SIMPLE and (r.factor, r.level) == (row.factor, row.level)
        and r.other in row.changed_by
    ]  # fmt: skip
