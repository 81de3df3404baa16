"""The statistics behind ``runs compare``: the seed is the unit of replication.

Two sources of variance move an ablation's numbers (Bouthillier et al., MLSys 2021): the training
seed, and the finite validation set. A configuration is a distribution over seeds; each seed's
final top-1 is one draw from it. So the test compares the seeds' top-1 of two configurations:

- ``welch``: Welch's t on the seeds' top-1 (scipy's ``ttest_ind(equal_var=False)``): calibrated
  from two seeds per side, whatever the two spreads;
- ``pooled``: a t-test whose seed variance is pooled over every configuration of the sweep (more
  degrees of freedom; assumes one spread for all);
- ``with_images``: optionally, the image-sampling variance of the paired per-image difference that
  is not already inside the seed spread (estimated once, by moments), so the verdict speaks of new
  images from the same distribution, not only of this validation set;
- ``mcnemar``, ``disagreement``: descriptions of how two runs differ image by image, not tests of
  configurations (two seeds of one configuration routinely disagree on 5-10% of the images).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    std: float  # sample std (ddof=1); 0 for one value
    low: float  # 95% t interval of the mean; equal to the mean for one value
    high: float


def finite(values: list[float] | np.ndarray) -> np.ndarray:
    """The values as float64, Nones and NaNs dropped."""
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)


def mean_ci(
    values: list[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Interval:
    """Mean, std and the t interval of the mean of a few seeds' values (NaNs dropped).

    ``bounds`` clips the interval to the values the metric can take (top-1 lies in [0, 1]).
    """
    x = finite(values)
    if x.size == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(1, mean, 0.0, mean, mean)
    std = float(x.std(ddof=1))
    if std == 0.0:  # every seed the same: scipy would return NaN for a zero scale
        return Interval(int(x.size), mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=std / math.sqrt(x.size))
    low, high = max(float(low), bounds[0]), min(float(high), bounds[1])
    return Interval(int(x.size), mean, std, low, high)


@dataclass(frozen=True)
class TTest:
    """A difference of means (B - A) with its standard error and t degrees of freedom."""

    delta: float
    se: float
    df: float
    method: str

    # scipy.special's t distribution functions, not scipy.stats.t's: the same values (tested)
    # without the ~50 us of argument checking a call, which the calibration simulations pay by
    # the hundred thousand
    def p_greater(self) -> float:
        """One-sided p-value of "B is not better" (small when B is better)."""
        return float(special.stdtr(self.df, -self.delta / self.se))

    def p_less(self) -> float:
        """One-sided p-value of "B is not worse"."""
        return float(special.stdtr(self.df, self.delta / self.se))

    @property
    def p_two(self) -> float:
        return min(1.0, 2 * min(self.p_greater(), self.p_less()))

    def margin(self, level: float) -> float:
        """Half-width of the one-sided bounds at ``level`` each (t quantile x SE)."""
        return float(special.stdtrit(self.df, 1 - level) * self.se)


def welch(a: np.ndarray, b: np.ndarray) -> TTest | None:
    """Welch's t on the seeds' values of A and B; None where a side has fewer than 2 seeds or
    neither side varies (no spread to test against).

    The contrast B - A of two cells (``contrast``): what ``scipy.stats.ttest_ind(b, a,
    equal_var=False)`` computes (the test checks statistic, df and p against it), but the bounds
    need the SE and df themselves, and ttest_ind's ~0.3 ms a call would dominate the simulations.
    """
    test = contrast([finite(a), finite(b)], [-1.0, 1.0])
    return None if test is None else TTest(test.delta, test.se, test.df, "Welch t")


def contrast(cells: list[np.ndarray], coefs: list[float]) -> TTest | None:
    """L = sum c_i * mean_i of cells' seed values, SE = sqrt(sum c_i^2 s_i^2 / n_i) and the
    Welch-Satterthwaite df (Satterthwaite 1946): (sum a_i)^2 / sum a_i^2 / (n_i - 1), with
    a_i = c_i^2 s_i^2 / n_i. None where a cell it needs has fewer than 2 seeds (its spread is
    unknown) or no cell varies.

    Written here: scipy tests two samples only, and statsmodels' robust contrasts use normal
    quantiles or df = N - p, both liberal when the cells' spreads differ (research note;
    ``tests/test_effects.py`` shows this one calibrated by simulation).
    """
    used = [(np.asarray(x, np.float64), c) for x, c in zip(cells, coefs) if c != 0]
    if any(x.size < 2 for x, _ in used):
        return None
    parts = [c * c * x.var(ddof=1) / x.size for x, c in used]
    var = sum(parts)
    if var == 0.0:
        return None
    df = var**2 / sum(a * a / (x.size - 1) for a, (x, _) in zip(parts, used))
    delta = sum(c * x.mean() for x, c in used)
    return TTest(float(delta), math.sqrt(var), float(df), "Welch-Satterthwaite t")


def pooled_contrast(
    cells: list[np.ndarray], coefs: list[float], sd: float, df: int
) -> TTest | None:
    """The contrast with one seed SD for every cell, pooled over the sweep (``pooled_sd``): one
    seed a cell is enough, at the price of assuming equal spreads."""
    used = [(np.asarray(x, np.float64), c) for x, c in zip(cells, coefs) if c != 0]
    if any(x.size == 0 for x, _ in used) or df < 1 or not sd > 0:
        return None
    se = sd * math.sqrt(sum(c * c / x.size for x, c in used))
    delta = sum(c * x.mean() for x, c in used)
    return TTest(float(delta), se, float(df), f"pooled t ({df} df)")


def pooled_sd(groups: list[np.ndarray]) -> tuple[float, int]:
    """The within-configuration seed SD pooled over ``groups`` (those of 2+ seeds), and its df.

    Written here because scipy pools only the two samples of one test, not a whole sweep.
    """
    kept = [finite(g) for g in groups]
    kept = [g for g in kept if g.size >= 2]
    df = sum(g.size - 1 for g in kept)
    if df == 0:
        return math.nan, 0
    return math.sqrt(sum(g.var(ddof=1) * (g.size - 1) for g in kept) / df), df


def pooled(a: np.ndarray, b: np.ndarray, sd: float, df: int) -> TTest | None:
    """A t-test of B - A with a seed SD and df pooled over the sweep (one seed a side is enough)."""
    return pooled_contrast([finite(a), finite(b)], [-1.0, 1.0], sd, df)


def image_variance(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Variance of the mean difference from sampling the validation images, net of seed noise.

    ``correct_*`` are (seeds, images) 0/1 arrays over the same images. The per-image difference
    d_i = (share of B's seeds right) - (share of A's) varies over images both because the two
    configurations truly differ on some images and because a few seeds estimate each share; the
    second part, the per-image seed variances over the seed counts, is inside the seed spread
    already, so it is subtracted (a moment estimate, floored at 0), not counted twice.
    """
    a, b = np.asarray(correct_a, np.float64), np.asarray(correct_b, np.float64)
    n_img = a.shape[1]
    d = b.mean(axis=0) - a.mean(axis=0)
    seed_noise = a.var(axis=0, ddof=1) / a.shape[0] + b.var(axis=0, ddof=1) / b.shape[0]
    return max(0.0, float(d.var(ddof=1) - seed_noise.mean())) / n_img


def with_images(test: TTest, tau2: float, n_images: int) -> TTest:
    """``test`` with the image-sampling variance added; Satterthwaite's df for the sum."""
    if tau2 <= 0.0:
        return TTest(test.delta, test.se, test.df, test.method + " + images (0)")
    var = test.se**2 + tau2
    df = var**2 / (test.se**4 / test.df + tau2**2 / (n_images - 1))
    return TTest(test.delta, math.sqrt(var), df, test.method + " + images")


def superiority(a: np.ndarray, b: np.ndarray) -> float:
    """The share of (A seed, B seed) pairs in which B's value beats A's, ties counting half:
    the Mann-Whitney U of B over the number of pairs (a descriptive effect size, not a test)."""
    a, b = finite(a), finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(stats.mannwhitneyu(b, a).statistic) / (a.size * b.size)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(images only A gets right, images only B gets right, exact two-sided p-value): whether
    these two *runs* disagree, which two seeds of one configuration routinely do."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)


def disagreement(correct: np.ndarray) -> float:
    """Mean share of images on which two seeds of one configuration disagree (NaN under 2 seeds)."""
    c = np.asarray(correct, bool)
    pairs = list(itertools.combinations(range(c.shape[0]), 2))
    if not pairs:
        return math.nan
    return float(np.mean([np.mean(c[i] != c[j]) for i, j in pairs]))
