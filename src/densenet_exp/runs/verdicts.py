"""From tests to verdicts: Holm over both directions, intervals that agree with it, equivalence
within a minimum effect, and the levels of planned looks.

Each configuration B against the baseline A is two one-sided hypotheses, "B is not better" and
"B is not worse"; with m configurations that is a family of 2m. Holm's step-down over the family
keeps the chance of any wrong "better" or "worse" at alpha (Holm 1979). The intervals are the
simultaneous confidence bounds compatible with Holm (Strassburger & Bretz, Stat. Med. 2008): a
bound whose hypothesis Holm rejects is 0 (the interval is (0, high] for "better"), and the others
are drawn at alpha / (hypotheses not rejected), so an interval excludes 0 exactly when the verdict
is better or worse, and all of them hold together with probability 1 - alpha. Every claim read
off them, "equivalent within ±D" included (the two one-sided tests of Schuirmann 1987 at the
bounds' level), shares that guarantee.

Looks planned by ``runs extend`` spend alpha over the looks with Lan & DeMets' O'Brien-Fleming
function; each look tests its increment with Bonferroni bounds over the family, so the rate over
all looks is at most alpha by the union bound, whatever the looks' correlation and whichever
configurations stopped early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from scipy import stats

from .stats import TTest


class Verdict(str, Enum):
    better = "better"
    worse = "worse"
    equivalent = "equivalent"  # within ±min_effect
    undecided = "undecided"
    not_tested = "not tested"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    low: float  # simultaneous bounds of B - A; 0 is an open end ("> 0") for a Holm rejection
    high: float
    p_adjusted: float  # <= alpha exactly when the verdict is better or worse
    level: float  # the one-sided level of each bound not at 0


def _read(low: float, high: float, min_effect: float, up: bool, down: bool) -> Verdict:
    if up:
        return Verdict.better
    if down:
        return Verdict.worse
    if min_effect > 0 and -min_effect < low and high < min_effect:
        return Verdict.equivalent
    return Verdict.undecided


def holm_decisions(tests: list[TTest], alpha: float, min_effect: float) -> list[Decision]:
    """Verdicts and compatible simultaneous intervals for a family of comparisons, one look.

    Written here: statsmodels' ``multipletests(method="holm")`` adjusts p-values but draws no
    compatible bounds, and would bring statsmodels and pandas in for the dozen lines of the rule.
    """
    family = [(i, +1, t.p_greater()) for i, t in enumerate(tests)]
    family += [(i, -1, t.p_less()) for i, t in enumerate(tests)]
    k = len(family)
    adjusted = [1.0] * k
    rejected: set[tuple[int, int]] = set()
    running, stopped = 0.0, False
    for rank, h in enumerate(sorted(range(k), key=lambda h: family[h][2])):
        i, side, p = family[h]
        running = max(running, min(1.0, (k - rank) * p))
        adjusted[h] = running
        stopped = stopped or p > alpha / (k - rank)
        if not stopped:
            rejected.add((i, side))
    level = alpha / (k - len(rejected)) if k else alpha
    out = []
    for i, t in enumerate(tests):
        up, down = (i, +1) in rejected, (i, -1) in rejected
        low = 0.0 if up else t.delta - t.margin(level)
        high = 0.0 if down else t.delta + t.margin(level)
        p_adj = min(adjusted[i], adjusted[len(tests) + i])
        out.append(Decision(_read(low, high, min_effect, up, down), low, high, p_adj, level))
    return out


def look_decisions(
    tests: list[TTest], level: float, alpha: float, min_effect: float
) -> list[Decision]:
    """Verdicts at one planned look: every bound at the one-sided ``level`` (Bonferroni)."""
    out = []
    for t in tests:
        low, high = t.delta - t.margin(level), t.delta + t.margin(level)
        up, down = t.p_greater() <= level, t.p_less() <= level
        p_adj = min(1.0, min(t.p_greater(), t.p_less()) * alpha / level)
        out.append(Decision(_read(low, high, min_effect, up, down), low, high, p_adj, level))
    return out


def obrien_fleming(fraction: float, alpha: float) -> float:
    """The alpha spent by information ``fraction`` (Lan-DeMets O'Brien-Fleming type, two-sided):
    almost nothing at early looks, alpha at the last."""
    if fraction <= 0:
        return 0.0
    z = stats.norm.ppf(1 - alpha / 2) / math.sqrt(min(1.0, fraction))
    return float(2 * stats.norm.sf(z))


def look_alphas(looks: list[int], alpha: float) -> list[float]:
    """The alpha each planned look may spend: increments of the spending function at the
    information fractions seeds / final seeds."""
    spent = [obrien_fleming(n / looks[-1], alpha) for n in looks]
    return [b - a for a, b in zip([0.0, *spent[:-1]], spent)]


def doubling_looks(first: int, max_seeds: int) -> list[int]:
    """Seeds per configuration at each look: now, then doubling, ending at ``max_seeds``."""
    if max_seeds <= first:
        raise ValueError(f"--max-seeds {max_seeds} must exceed the {first} seed(s) there are now")
    looks = [first]
    while looks[-1] * 2 < max_seeds:
        looks.append(looks[-1] * 2)
    return [*looks, max_seeds]
