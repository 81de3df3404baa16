"""What would decide an open comparison: the smallest difference these seeds can detect, and how
many seeds per configuration would detect the minimum effect with 80% power.

Power is the noncentral t's (scipy's ``nct``), the exact power of a two-sample t-test at equal
seed counts; the seed SD it plans with is an upper confidence bound, because a few seeds
underestimate the spread as often as not and a plan from the point estimate falls short. The
per-image disagreement between two seeds of one configuration, a share d of N images, alone
gives seeds' top-1 a spread of about sqrt(d / 2N): more seeds average it away slowly, a larger
validation set shrinks it directly.
"""

from __future__ import annotations

import math

from scipy import stats

from .stats import POWER, TTest

PLAN_CONFIDENCE = 0.8  # the seed SD planned with is exceeded by the truth 20% of the time
MANY_SEEDS = 30  # past this, say whether a larger validation set would serve better


def detectable(test: TTest, level: float, power: float = POWER) -> float:
    """The smallest true difference these seeds find with ``power`` at the one-sided ``level``."""
    return float((stats.t.ppf(1 - level, test.df) + stats.t.ppf(power, test.df)) * test.se)


def sd_upper(sd: float, df: float, confidence: float = PLAN_CONFIDENCE) -> float:
    """One-sided upper confidence bound on a seed SD estimated with ``df`` degrees of freedom."""
    return float(sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df)))


def contrast_power(n: int, weights: list[float], effect: float, level: float) -> float:
    """Power of a contrast's t-test at ``n`` seeds in every cell, one-sided ``level``, for a true
    ``effect``. ``weights`` are the cells' c_i^2 sigma_i^2 (the contrast's variance with one seed
    a cell): the SE is sqrt(sum w / n) and the Welch-Satterthwaite df (n - 1) (sum w)^2 / sum w^2,
    which for two cells of one spread is the two-sample t's 2n - 2."""
    total = sum(weights)
    df = (n - 1) * total**2 / sum(w * w for w in weights)
    noncentrality = effect / math.sqrt(total / n)
    return float(stats.nct.sf(stats.t.ppf(1 - level, df), df, noncentrality))


def t_power(n: int, sd: float, effect: float, level: float) -> float:
    """Power of a two-sample t-test (n seeds a side, one-sided ``level``) for a true ``effect``."""
    return contrast_power(n, [sd * sd, sd * sd], effect, level)


def seeds_needed(
    sd: float, effect: float, level: float, power: float = POWER, limit: int = 100_000
) -> int | None:
    """The fewest seeds per configuration that find ``effect`` with ``power`` (None: over
    ``limit``, or no effect to find)."""
    if not sd > 0:
        return None
    return seeds_per_cell([sd * sd, sd * sd], effect, level, power, limit)


def seeds_per_cell(
    weights: list[float], effect: float, level: float, power: float = POWER, limit: int = 100_000
) -> int | None:
    """The fewest seeds in every cell that find ``effect`` with ``power`` through a contrast of
    these ``weights`` (see ``contrast_power``); None: over ``limit``, or no effect to find."""
    if not (effect > 0 and sum(weights) > 0):
        return None
    if contrast_power(limit, weights, effect, level) < power:
        return None
    low, high = 2, limit  # power rises with n: bisect for the first n that reaches it
    while low < high:
        mid = (low + high) // 2
        if contrast_power(mid, weights, effect, level) >= power:
            high = mid
        else:
            low = mid + 1
    return low


def image_floor(disagreement: float, n_images: int) -> float:
    """The seed SD of top-1 that per-image disagreement alone gives: sqrt(d / 2N)."""
    if math.isnan(disagreement) or n_images <= 0:
        return math.nan
    return math.sqrt(disagreement / (2 * n_images))


def advice(needed: int | None, have: int, sd: float, floor: float, effect: float) -> str:
    """The seeds-needed sentence for an undecided comparison."""
    if needed is None:
        return f"no feasible number of seeds detects ±{effect:.4f}"
    if needed <= have:
        return f"{have} seeds each should have decided ±{effect:.4f}: the difference is small"
    text = f"about {needed} seeds each would decide ±{effect:.4f} (80% power)"
    if needed > MANY_SEEDS and not math.isnan(floor) and floor**2 >= 0.5 * sd**2:
        text += (
            f": a larger validation set would help more (per-image disagreement alone gives "
            f"the seeds a spread of {floor:.4f} of the {sd:.4f} planned with)"
        )
    return text
