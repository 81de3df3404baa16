"""``runs compare``: every configuration against a baseline, with a verdict whose error rate is
what it says.

The seed is the unit of replication. For each configuration B and the baseline A:

- the difference of mean final top-1 over seeds (B - A) and Welch's t on the seeds' top-1
  (``--pooled``: the seed variance pooled over the sweep; ``--images``: plus the validation
  images' sampling variance);
- a verdict from Holm over both directions of every comparison, with simultaneous intervals that
  agree with it: better, worse, equivalent within ±min-effect, or undecided (``verdicts``);
- for undecided ones, what these seeds could detect and how many seeds would decide (``power``);
- one seed a side is not tested: the seed spread is unknown (the two runs' per-image disagreement
  is described, not tested). With a plan from ``runs extend``, each look at its planned level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import power, stats
from .configs import Configuration, mark_baseline
from .plan import Plan
from .records import Run
from .verdicts import Decision, Verdict, holm_decisions, look_alphas, look_decisions


@dataclass(frozen=True)
class Options:
    alpha: float = stats.ALPHA
    min_effect: float | None = None  # None: a tenth of the baseline's errors (or the plan's)
    pooled: bool = False  # one seed SD for the whole sweep (assumes equal spreads)
    images: bool = False  # add the validation images' sampling variance


@dataclass
class Comparison:
    config: Configuration
    baseline: Configuration
    n: int = 0
    baseline_n: int = 0
    delta: float = math.nan  # mean final top-1 over seeds, config - baseline
    low: float = math.nan  # simultaneous bounds (see verdicts)
    high: float = math.nan
    b_beats_a: float = math.nan  # share of (baseline seed, config seed) pairs the config wins
    test: str = ""
    se: float = math.nan
    df: float = math.nan
    p_value: float = math.nan  # two-sided, this comparison alone
    adjusted_p: float = math.nan  # Holm over the family (or the planned look's level)
    verdict: str = ""
    min_effect: float = math.nan
    detectable: float = math.nan
    seeds_needed: int | None = None
    advice: str = ""
    runs_differ_on: int | None = None  # one seed a side: images the two runs disagree on
    look: int = 0  # the planned look that judged it (0: no plan)
    note: str = ""
    _test: stats.TTest | None = field(default=None, repr=False)


def seeded(config: Configuration) -> list[Run]:
    """The finished runs of a configuration in seed order (the order ``extend`` adds them in)."""
    return sorted(config.ok, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))


def top1(runs: list[Run]) -> np.ndarray:
    return stats.finite([r.metric("final_val_top1") for r in runs])


def correct_matrix(runs: list[Run], images: list[str]) -> np.ndarray:
    """(seeds, images) of 0/1: which images each run's final evaluation got right."""
    return np.array([[r.predictions[i] for i in images] for r in runs], dtype=np.float64)


def shared_images(runs: list[Run]) -> list[str] | None:
    """The validation images every run was scored on, or None (no predictions, or different)."""
    if not runs or any(r.predictions is None for r in runs):
        return None
    images = sorted(runs[0].predictions)
    return images if all(sorted(r.predictions) == images for r in runs) else None


def _unknown_spread(a: list[Run], b: list[Run], label: str) -> str:
    if len(a) < 2 and len(b) < 2:
        return "not tested: one seed each, the seed spread is unknown"
    if len(a) < 2 or len(b) < 2:
        return f"not tested: one seed of {label}, its seed spread is unknown"
    return "not tested: the seeds' top-1 do not vary, no spread to test against"


def _test(
    row: Comparison, k: int | None, options: Options, pool: tuple[float, int]
) -> stats.TTest | None:
    """The t-test of row's first ``k`` seeds against the baseline's; None with ``row.note`` why."""
    a, b = seeded(row.baseline)[:k], seeded(row.config)[:k]
    row.n, row.baseline_n = len(b), len(a)
    row.note = ""  # an earlier look's "not tested" no longer holds once this look tests
    va, vb = top1(a), top1(b)
    row.delta = float(vb.mean() - va.mean())
    row.b_beats_a = stats.superiority(va, vb)
    test = stats.pooled(va, vb, *pool) if options.pooled else stats.welch(va, vb)
    if test is None:
        row.note = _unknown_spread(a, b, row.config.label if len(b) < 2 else row.baseline.label)
        return None
    images = shared_images(a + b)
    if options.images and images and len(a) >= 2 and len(b) >= 2:
        ca, cb = correct_matrix(a, images), correct_matrix(b, images)
        test = stats.with_images(test, stats.image_variance(ca, cb), len(images))
    row.test, row.se, row.df = f"{test.method} ({len(b)} vs {len(a)} seeds)", test.se, test.df
    row.p_value = test.p_two
    row._test = test
    return test


def _apply(row: Comparison, decision: Decision) -> None:
    # a difference of two accuracies lies in [-1, 1]; a t bound from two seeds can pass it
    row.low, row.high = max(decision.low, -1.0), min(decision.high, 1.0)
    row.adjusted_p, row.verdict = decision.p_adjusted, decision.verdict.value
    if decision.verdict == Verdict.undecided and row._test is not None:
        row.detectable = power.detectable(row._test, decision.level)


def _fixed(rows: list[Comparison], options: Options, d: float, pool: tuple[float, int]) -> None:
    tested = [(r, t) for r in rows if (t := _test(r, None, options, pool)) is not None]
    decisions = holm_decisions([t for _, t in tested], options.alpha, d)
    for (row, _), decision in zip(tested, decisions):
        _apply(row, decision)


def _sequential(
    rows: list[Comparison], options: Options, plan: Plan, configs: list[Configuration]
) -> None:
    """Each comparison through the plan's looks, on its first n seeds, until one decides it."""
    alphas = look_alphas(plan.looks, plan.alpha)
    family = max(1, len(configs) - 1)
    for j, k in enumerate(plan.looks[: plan.taken]):
        # a pooled spread from the seeds this look has, not from later looks' seeds
        pool = _pool([seeded(c)[:k] for c in configs]) if options.pooled else (math.nan, 0)
        for row in rows:
            if row.verdict and row.verdict != Verdict.undecided:
                continue  # decided at an earlier look: that verdict stands
            if min(len(row.config.ok), len(row.baseline.ok)) < k and j > 0:
                row.note = f"look {j + 1} needs {k} seeds a side"
                continue
            test = _test(row, k, options, pool)
            if test is None:
                continue
            level = alphas[j] / (2 * family)
            _apply(row, look_decisions([test], level, plan.alpha, plan.min_effect)[0])
            row.look = j + 1


def _pool(runs: list[list[Run]]) -> tuple[float, int]:
    return stats.pooled_sd([top1(r) for r in runs])


def _plan_seeds(row: Comparison, options: Options, family: int, pool: tuple[float, int]) -> None:
    """For an open comparison: how many seeds per configuration would decide the min effect."""
    a, b = seeded(row.baseline)[: row.baseline_n], seeded(row.config)[: row.n]
    level = options.alpha / (2 * family)
    images = shared_images(a + b)
    if row._test is None:  # one seed a side: the runs' disagreement bounds the spread below
        if images and len(a) == 1 and len(b) == 1:
            ca, cb = correct_matrix(a, images)[0], correct_matrix(b, images)[0]
            only_a, only_b, _ = stats.mcnemar(ca, cb)
            row.runs_differ_on = only_a + only_b
            floor = power.image_floor((only_a + only_b) / len(images), len(images))
            least = power.seeds_needed(floor, row.min_effect, level)
            if least:
                row.advice = f"at least {least} seeds each to decide ±{row.min_effect:.4f}"
        return
    sd, df = pool if options.pooled else stats.pooled_sd([top1(a), top1(b)])
    planned = power.sd_upper(sd, df)
    row.seeds_needed = power.seeds_needed(planned, row.min_effect, level)
    floor = math.nan
    pairs = [stats.disagreement(correct_matrix(x, images)) for x in (a, b) if images and len(x) > 1]
    if pairs:
        floor = power.image_floor(float(np.mean(pairs)), len(images))
    have = min(row.n, row.baseline_n)
    row.advice = power.advice(row.seeds_needed, have, planned, floor, row.min_effect)


def default_min_effect(base: Configuration) -> float:
    """A tenth of the baseline's errors (1 - its mean final top-1 over seeds)."""
    return 0.1 * (1.0 - float(top1(base.ok).mean())) if base.ok else math.nan


def compare(
    configs: list[Configuration],
    baseline: str | None = None,
    options: Options | None = None,
    plan: Plan | None = None,
) -> list[Comparison]:
    """Every configuration against the baseline, one family (see the module's docstring)."""
    options = options or Options()
    if plan is not None and plan.family != "configurations":
        plan = None  # its looks spend on the effects: this is a fixed-sample look
    if plan is not None:  # the plan fixed the test before its first look
        options = replace(options, alpha=plan.alpha, pooled=plan.pooled, images=plan.images)
    if plan is not None and baseline not in (None, plan.baseline):
        raise ValueError(f"this sweep's plan compares against {plan.baseline}, not {baseline}")
    if plan is not None and options.min_effect not in (None, plan.min_effect):
        raise ValueError(
            f"this sweep's plan fixed the min effect at {plan.min_effect}, not {options.min_effect}"
        )
    base = mark_baseline(configs, baseline or (plan.baseline if plan else None))
    if base is None:
        return []
    d = plan.min_effect if plan else options.min_effect
    if d is None:
        d = default_min_effect(base)
    pool = _pool([c.ok for c in configs]) if options.pooled else (math.nan, 0)
    rows = [Comparison(c, base, min_effect=d) for c in configs if c is not base]
    runnable = [r for r in rows if r.config.ok and base.ok]
    for r in rows:
        if r not in runnable:
            r.note = "no finished run"
    if plan is None:
        _fixed(runnable, options, d, pool)
    else:
        _sequential(runnable, options, plan, configs)
    for r in rows:
        r.verdict = r.verdict or Verdict.not_tested.value
        if r.verdict in (Verdict.undecided, Verdict.not_tested) and r in runnable:
            _plan_seeds(r, options, max(1, len(rows)), pool)
    return rows
