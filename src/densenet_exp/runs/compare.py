"""``runs compare``: every configuration against a baseline, with both sources of variance.

For each configuration B and the baseline A, on the final evaluation's per-image predictions:

- the difference of mean top-1 (B - A) with a 95% interval and P(B better), from a bootstrap that
  resamples each configuration's seeds and the validation images, the images once for the pair
  (they are the same images: the comparison is paired);
- a p-value: from that bootstrap, or, with one seed on each side, the exact McNemar test on the
  images one gets right and the other wrong;
- Holm's correction across the comparisons of one call, and a verdict in words; for "no
  detectable difference", the smallest difference these seeds and images could have detected
  (80% power at the 5% level).

Runs without prediction files (older runs) fall back to Welch's t-test on the seeds' top-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from . import stats
from .configs import Configuration, mark_baseline
from .records import Run
from .table import markdown


@dataclass
class Comparison:
    config: Configuration
    baseline: Configuration
    delta: float = math.nan  # mean final top-1, config - baseline
    low: float = math.nan
    high: float = math.nan
    p_better: float = math.nan
    test: str = ""
    p_value: float = math.nan
    adjusted_p: float = math.nan
    verdict: str = ""
    detectable: float = math.nan
    note: str = ""


def correct_matrix(runs: list[Run], images: list[str]) -> np.ndarray:
    """(seeds, images) of 0/1: which images each run's final evaluation got right."""
    return np.array([[r.predictions[i] for i in images] for r in runs], dtype=np.float64)


def compare_pair(config: Configuration, baseline: Configuration, seed: int = 0) -> Comparison:
    """One configuration against the baseline (before the multiple-comparison correction)."""
    out = Comparison(config, baseline)
    a, b = baseline.ok, config.ok
    if not a or not b:
        out.note = "no finished run"
        return out
    if all(r.predictions is not None for r in a + b):
        images = sorted(a[0].predictions)
        if any(sorted(r.predictions) != images for r in a + b):
            out.note = "different validation images: not comparable image by image"
            return out
        ca, cb = correct_matrix(a, images), correct_matrix(b, images)
        diff = stats.paired_bootstrap(ca, cb, seed=seed)
        out.delta, out.low, out.high = diff.mean, diff.low, diff.high
        out.p_better = diff.p_better
        out.detectable = stats.detectable(diff.se)
        if len(a) == 1 and len(b) == 1:
            only_a, only_b, out.p_value = stats.mcnemar(ca[0], cb[0])
            out.test = f"exact McNemar ({only_b} vs {only_a} discordant)"
        else:
            out.p_value = diff.p_value
            out.test = f"bootstrap ({len(b)} vs {len(a)} seeds x {len(images)} images)"
        return out
    top_a = [float(r.metric("final_val_top1")) for r in a]
    top_b = [float(r.metric("final_val_top1")) for r in b]
    out.delta = float(np.mean(top_b) - np.mean(top_a))
    if len(a) >= 2 and len(b) >= 2:
        welch = sps.ttest_ind(top_b, top_a, equal_var=False)
        out.p_value = float(welch.pvalue)
        ci = welch.confidence_interval()
        out.low, out.high = float(ci.low), float(ci.high)
        out.test = "Welch t on seeds (no per-image predictions)"
    else:
        out.note = "no per-image predictions and fewer than 2 seeds: no test"
    return out


def compare(
    configs: list[Configuration], baseline: str | None = None, seed: int = 0
) -> list[Comparison]:
    """Every configuration against the baseline, Holm-corrected together."""
    base = mark_baseline(configs, baseline)
    if base is None:
        return []
    rows = [compare_pair(c, base, seed) for c in configs if c is not base]
    tested = [r for r in rows if not math.isnan(r.p_value)]
    for r, adjusted in zip(tested, stats.holm([r.p_value for r in tested])):
        r.adjusted_p = adjusted
        r.verdict = stats.verdict(r.delta, adjusted)
    for r in rows:
        if not r.verdict:
            r.verdict = "not tested"
    return rows


def comparison_rows(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    return [
        {
            "configuration": c.config.label,
            "n": len(c.config.ok),
            "baseline": c.baseline.label,
            "baseline_n": len(c.baseline.ok),
            "delta_top1": c.delta,
            "ci_low": c.low,
            "ci_high": c.high,
            "p_better": c.p_better,
            "test": c.test,
            "p_value": c.p_value,
            "p_holm": c.adjusted_p,
            "verdict": c.verdict,
            "detectable_delta": c.detectable,
            "note": c.note,
        }
        for c in comparisons
    ]


def _signed(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:+.4f}"


def comparison_markdown(rows: list[dict[str, Any]]) -> list[str]:
    shown = []
    for r in rows:
        verdict = r["verdict"]
        if verdict == "no detectable difference" and not math.isnan(r["detectable_delta"]):
            verdict += f" (could detect ±{r['detectable_delta']:.4f})"
        ci = ""
        if not math.isnan(r["ci_low"]):
            ci = f"[{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]"
        shown.append(
            {
                "configuration": r["configuration"],
                "n": r["n"],
                "Δ top-1 vs baseline": _signed(r["delta_top1"]),
                "95% CI": ci,
                "P(better)": None if math.isnan(r["p_better"]) else f"{r['p_better']:.3f}",
                "test": r["test"] or r["note"],
                "p": None if math.isnan(r["p_value"]) else f"{r['p_value']:.4g}",
                "p (Holm)": None if math.isnan(r["p_holm"]) else f"{r['p_holm']:.4g}",
                "verdict": verdict,
            }
        )
    columns = ["configuration", "n", "Δ top-1 vs baseline", "95% CI", "P(better)", "test"]
    return markdown([*columns, "p", "p (Holm)", "verdict"], shown)
