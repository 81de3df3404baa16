"""The comparison as CSV rows and markdown. Renders only; ``report`` writes the files."""

from __future__ import annotations

import math
from typing import Any

from .compare import Comparison
from .plan import Plan
from .table import markdown
from .verdicts import Verdict


def comparison_rows(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    return [
        {
            "configuration": c.config.label,
            "n": c.n or len(c.config.ok),
            "baseline": c.baseline.label,
            "baseline_n": c.baseline_n or len(c.baseline.ok),
            "delta_top1": c.delta,
            "ci_low": c.low,
            "ci_high": c.high,
            "b_beats_a": c.b_beats_a,
            "test": c.test,
            "se": c.se,
            "df": c.df,
            "p_value": c.p_value,
            "p_holm": c.adjusted_p,
            "verdict": c.verdict,
            "min_effect": c.min_effect,
            "detectable_delta": c.detectable,
            "seeds_needed": c.seeds_needed,
            "runs_differ_on": c.runs_differ_on,
            "look": c.look or None,
            "advice": c.advice,
            "note": c.note,
        }
        for c in comparisons
    ]


def _signed(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:+.4f}"


def interval_text(row: dict[str, Any]) -> str:
    """``[low, high]``; a bound at 0 from a Holm rejection is an open end: ``(0, +0.0512]``."""
    low, high = row["ci_low"], row["ci_high"]
    if math.isnan(low):
        return ""
    if row["verdict"] == Verdict.better and low == 0:
        return f"(0, {_signed(high)}]"
    if row["verdict"] == Verdict.worse and high == 0:
        return f"[{_signed(low)}, 0)"
    return f"[{_signed(low)}, {_signed(high)}]"


def _number(v: Any, fmt: str) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def comparison_markdown(rows: list[dict[str, Any]]) -> list[str]:
    shown = [
        {
            "configuration": r["configuration"],
            "n": r["n"],
            "Δ top-1 vs baseline": _signed(r["delta_top1"]),
            "simultaneous 95% interval": interval_text(r),
            "B beats A (seed pairs)": _number(r["b_beats_a"], ".2f"),
            "test": r["test"] or r["note"],
            "p": _number(r["p_value"], ".4g"),
            "p (Holm)": _number(r["p_holm"], ".4g"),
            "verdict": r["verdict"],
        }
        for r in rows
    ]
    lines = markdown(list(shown[0]) if shown else ["configuration"], shown)
    open_rows = [r for r in rows if r["verdict"] in (Verdict.undecided, Verdict.not_tested)]
    if open_rows:
        lines += ["", "What would decide the open comparisons:", ""]
    for r in open_rows:
        said = []
        if r["runs_differ_on"] is not None:
            said.append(f"these two runs differ on {r['runs_differ_on']} images")
        if not math.isnan(r["detectable_delta"]):
            said.append(f"these seeds detect ±{r['detectable_delta']:.4f} (80% power) now")
        said += [s for s in (r["advice"], r["note"] if r["test"] else "") if s]
        lines.append(f"- {r['configuration']}: " + "; ".join(said or ["no finished run"]))
    return lines


def comparison_header(
    base_label: str, base_n: int, min_effect: float, alpha: float, plan: Plan | None
) -> str:
    """The line above the table: the baseline, the level and the minimum effect."""
    errors = "" if plan else " (a tenth of the baseline's errors unless --min-effect)"
    method = plan.spending if plan else "Holm over both directions"
    text = (
        f"## Against the baseline: {base_label} (n={base_n}); final val top-1 over seeds, "
        f"{alpha:.0%} family-wise ({method}); min effect ±{min_effect:.4f}{errors}"
    )
    if plan is not None:
        text += plan.look_note("seeds")
    return text
