"""The statistics behind ``runs compare``: intervals over seeds, paired tests over images.

Two sources of variance move an ablation's numbers (Bouthillier et al., MLSys 2021): the training
seed, and the finite validation set. Two configurations are scored on the same validation images,
so their difference is paired image by image. The tools here:

- ``mean_ci``: mean, std and the t interval of one metric over a configuration's seeds (scipy).
- ``mcnemar``: the exact McNemar test on the images one run gets right and the other wrong
  (Dietterich 1998), as ``scipy.stats.binomtest`` on the discordant counts: for one seed each.
- ``paired_bootstrap``: the difference of mean top-1 resampling seeds within each configuration and
  images jointly across both (the images are shared, so they are drawn once for the pair).
  scipy's ``bootstrap`` resamples one level only; this two-level scheme is written here.
- ``holm``: Holm's step-down adjustment across the comparisons of one sweep (scipy has only the
  false-discovery-rate adjustments, which control a different error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    std: float  # sample std (ddof=1); 0 for one value
    low: float  # 95% t interval of the mean; equal to the mean for one value
    high: float


def mean_ci(
    values: list[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Interval:
    """Mean, std and the t interval of the mean of a few seeds' values (NaNs dropped).

    ``bounds`` clips the interval to the values the metric can take (top-1 lies in [0, 1]).
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
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


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(images only A gets right, images only B gets right, exact two-sided p-value)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)


@dataclass(frozen=True)
class Difference:
    mean: float  # mean top-1 of B minus that of A, over all seeds and images
    low: float  # 95% bootstrap percentile interval
    high: float
    p_better: float  # share of resamples where B beats A (ties count half)
    p_value: float  # two-sided: twice the smaller tail, at least 1 / (resamples + 1)
    se: float  # bootstrap standard error of the difference


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    chunk: int = 500,
) -> Difference:
    """Difference of mean top-1, B - A, with seeds and images both resampled.

    ``correct_a`` and ``correct_b`` are (seeds, images) 0/1 arrays over the same images in the same
    order. Each resample draws the images once, with replacement, for both (they are paired), and
    the seeds of each configuration with replacement, independently.
    """
    a = np.asarray(correct_a, np.float64)
    b = np.asarray(correct_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"need (seeds, images) arrays over the same images, got {a.shape} and {b.shape}"
        )
    rng = np.random.default_rng(seed)
    n_img = a.shape[1]
    # the (images, chunk) weights stay under ~32 MB however large the validation set
    chunk = max(1, min(chunk, 4_000_000 // max(1, n_img)))
    diffs = np.empty(resamples)
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        # image weights of m resamples: how often each image is drawn (a multinomial draw)
        weights = rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=m).T / n_img
        per_seed_a = a @ weights  # (seeds_a, m): each seed's top-1 on the resampled images
        per_seed_b = b @ weights
        pick_a = rng.integers(0, a.shape[0], size=(a.shape[0], m))
        pick_b = rng.integers(0, b.shape[0], size=(b.shape[0], m))
        cols = np.arange(m)
        acc_a = per_seed_a[pick_a, cols].mean(axis=0)
        acc_b = per_seed_b[pick_b, cols].mean(axis=0)
        diffs[start : start + m] = acc_b - acc_a
    observed = float(b.mean() - a.mean())
    low, high = np.percentile(diffs, [2.5, 97.5])
    p_better = float(np.mean(diffs > 0) + 0.5 * np.mean(diffs == 0))
    tail = min(np.mean(diffs <= 0), np.mean(diffs >= 0))
    p_value = float(min(1.0, max(2 * tail, 1.0 / (resamples + 1))))
    if np.all(diffs == 0):  # nothing differs anywhere: no evidence at all
        p_value = 1.0
    return Difference(observed, float(low), float(high), p_better, p_value, float(diffs.std()))


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (step-down, monotone, capped at 1)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``alpha`` finds with ``power``.

    The normal approximation (z_{1-alpha/2} + z_power) x SE, with SE the comparison's standard
    error: what this many seeds and images could have told apart.
    """
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def verdict(diff: float, adjusted_p: float, alpha: float = ALPHA) -> str:
    if adjusted_p < alpha:
        return "better" if diff > 0 else "worse"
    return "no detectable difference"
