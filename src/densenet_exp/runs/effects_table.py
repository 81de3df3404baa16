"""The effects as CSV rows, plain sentences and markdown. Renders only; ``report`` writes files."""

from __future__ import annotations

import math
from typing import Any

from .compare_table import interval_text
from .effects import MAIN, SIMPLE, Effect, Effects, simple_effects_of
from .table import markdown
from .verdicts import Verdict

COLUMNS = (
    "effect",
    "kind",
    "factor",
    "level",
    "reference",
    "other",
    "other_level",
    "other_reference",
    "averaged_over",
    "seeds",
    "estimate",
    "se",
    "df",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "verdict",
    "min_effect",
    "detectable_delta",
    "seeds_per_cell_needed",
    "dominant_cell",
    "dominant_share",
    "changed_by",
    "look",
    "test",
    "note",
)


def effect_rows(result: Effects) -> list[dict[str, Any]]:
    return [
        {
            "effect": r.name,
            "kind": r.kind,
            "factor": r.factor,
            "level": r.level,
            "reference": r.reference,
            "other": r.other,
            "other_level": r.other_level,
            "other_reference": r.other_reference,
            "averaged_over": r.averaged,
            "seeds": r.seeds or None,
            "estimate": r.estimate,
            "se": r.se,
            "df": r.df,
            "ci_low": r.low,
            "ci_high": r.high,
            "p_value": r.p_value,
            "p_holm": r.adjusted_p,
            "verdict": r.verdict,
            "min_effect": r.min_effect,
            "detectable_delta": r.detectable,
            "seeds_per_cell_needed": r.seeds_needed,
            "dominant_cell": r.dominant,
            "dominant_share": r.dominant_share,
            "changed_by": r.changed_text,
            "look": r.look or None,
            "test": r.test,
            "note": r.note,
        }
        for r in result.rows
    ]


def _signed(v: float) -> str:
    return "" if math.isnan(v) else f"{v:+.4f}"


def _interval(r: Effect) -> str:
    return interval_text({"ci_low": r.low, "ci_high": r.high, "verdict": r.verdict})


def headline(result: Effects, row: Effect) -> str:
    """One plain line for a main effect: what it is, over what, its interval and verdict."""
    grid = result.grid
    others = [f for f in grid.factors if f != row.factor]
    text = f"{row.name}: " + (f"{row.estimate:+.4f} top-1" if not math.isnan(row.estimate) else "")
    text += f" against {row.factor}={row.reference}"
    if others:
        text += f", averaged over {row.averaged}" if row.averaged else ""
    if row.low == row.low:  # not NaN
        text += f", interval {_interval(row)}"
    text += f": {row.verdict}"
    if row.verdict == Verdict.not_tested and row.note:
        text += f" ({row.note.removeprefix('not tested: ')})"
    if row.changed_by:
        text += f"; {row.changed_text}"
    return text


def _verdict_cell(r: Effect) -> str:
    return "(describes)" if r.kind == SIMPLE else r.verdict


def _shown(r: Effect, indent: str = "") -> dict[str, Any]:
    return {
        "effect": indent + r.name,
        "seeds": r.seeds or None,
        "estimate": _signed(r.estimate),
        "simultaneous 95% interval": _interval(r),
        "SE": None if math.isnan(r.se) else f"{r.se:.4f}",
        "df": None if math.isnan(r.df) else f"{r.df:.1f}",
        "p": None if math.isnan(r.p_value) else f"{r.p_value:.4g}",
        "p (Holm)": None if math.isnan(r.adjusted_p) else f"{r.adjusted_p:.4g}",
        "verdict": _verdict_cell(r),
    }


def effects_markdown(result: Effects, header: str) -> str:
    """The sentences per factor, the table (simple effects indented under the main effect whose
    interaction they show), and what would decide the open effects."""
    if result.grid.why_not:
        return f"{header}\n\n{result.grid.why_not}\n"
    lines = [header, ""]
    mains = [r for r in result.rows if r.kind == MAIN]
    lines += [f"- {headline(result, r)}" for r in mains]
    table = []
    for r in result.family:
        table.append(_shown(r))
        if r.kind == MAIN:
            table += [_shown(s, "↳ ") for s in simple_effects_of(result, r)]
    lines += ["", *markdown(list(table[0]) if table else ["effect"], table)]
    if any(r.kind == MAIN and r.changed_by for r in result.rows):
        lines += [
            "",
            "↳ simple effects: the factor's effect at one level of a factor that may change it; "
            "they describe the interaction (an interval at the family's level, no verdict).",
        ]
    open_rows = [r for r in result.family if r.verdict in (Verdict.undecided, Verdict.not_tested)]
    if open_rows:
        lines += ["", "What would decide the open effects:", ""]
    for r in open_rows:
        said = []
        if not math.isnan(r.detectable):
            said.append(f"these seeds detect ±{r.detectable:.4f} (80% power) now")
        if r.seeds_needed is not None:
            said.append(
                f"about {r.seeds_needed} seeds in every cell would decide ±{r.min_effect:.4f} "
                "(80% power)"
            )
        elif r.verdict == Verdict.undecided:
            said.append(f"no feasible number of seeds detects ±{r.min_effect:.4f}")
        if r.dominant and r.dominant_share >= 0.5:
            said.append(
                f"{r.dominant}'s seed spread makes up {r.dominant_share:.0%} of its variance"
            )
        if r.note:
            said.append(r.note)
        lines.append(f"- {r.name}: " + "; ".join(said))
    return "\n".join(lines) + "\n"


def effects_header(result: Effects) -> str:
    grid, plan = result.grid, result.plan
    if grid.why_not:
        return "## Effects per factor"
    refs = ", ".join(f"{f}={r}" for f, r in zip(grid.factors, grid.reference))
    method = plan.spending if plan else "Holm over both directions of every effect"
    text = (
        f"## Effects per factor (reference {refs}); final val top-1 over seeds, contrasts of cell "
        f"means (Welch-Satterthwaite), {result.alpha:.0%} family-wise ({method}); min effect "
        f"±{result.min_effect:.4f}"
    )
    if plan is not None:
        text += plan.look_note("seeds a cell")
    return text
