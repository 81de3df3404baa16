"""The files a sweep folder gets: ``summary.*`` per job and per configuration, ``compare.*``
against the baseline, ``effects.*`` per factor. ``table``, ``compare_table``, ``effects_table`` and
``plots`` render; ``configs``, ``compare`` and ``effects`` compute."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .compare import Options, compare
from .compare_table import comparison_header, comparison_markdown, comparison_rows
from .configs import configurations
from .effects import Effects, effects, simple_effects_of
from .effects_table import COLUMNS, effect_rows, effects_header, effects_markdown
from .plan import load_plan
from .plots import compare_plot, effects_plot, summary_plot
from .records import GROUPS, METRICS, Run, find_runs
from .table import config_markdown, config_rows, markdown, summary_rows


def write_summary(
    root: str | Path, plot: bool = True, cost: str = "macs", runs: list[Run] | None = None
) -> list[dict[str, Any]]:
    """``summary.csv`` (per job), ``summary_by_config.csv``, ``summary.md`` and ``summary.png``.

    Returns the per-job rows.
    """
    root = Path(root)
    runs = find_runs(root) if runs is None else runs
    rows = summary_rows(runs)
    columns = ["job", "status"]
    columns += [g for g in GROUPS if any(g in r for r in rows)]
    columns += ["overrides", *METRICS, "error"]
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    configs = configurations(runs)
    by_config = config_rows(configs)
    if by_config:
        with (root / "summary_by_config.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(by_config[0]))
            writer.writeheader()
            writer.writerows(by_config)
    text = []
    if by_config:
        text += ["## By configuration (mean ± std [95% CI] over seeds)", ""]
        text += [*config_markdown(by_config), "", "## Jobs", ""]
    text += markdown(columns, rows)
    (root / "summary.md").write_text("\n".join(text) + "\n")
    if plot and runs:
        summary_plot(configs, root / "summary.png", cost=cost)
    return rows


# a plan spends its alpha on one family; a look at the other is not one of its looks
_UNCOUNTED = " (the sweep's plan spends on {family}: this is a fixed-sample look it does not count)"


def read_runs(paths: list[str | Path]) -> list[Run]:
    """Every run under ``paths``, each once (a run folder may be given inside a sweep folder)."""
    runs, seen = [], set()
    for p in paths:
        for run in find_runs(p):
            if run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                runs.append(run)
    return runs


def write_compare(
    paths: list[str | Path],
    out_dir: str | Path | None,
    baseline: str | None = None,
    plot: bool = True,
    runs: list[Run] | None = None,
    options: Options | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Compare the configurations of every run under ``paths`` (or of ``runs``, already read);
    write compare.* to ``out_dir``. Returns the rows and the markdown text (printed by the CLI).

    A single sweep folder with a plan from ``runs extend`` is compared look by look.
    """
    options = options or Options()
    runs = read_runs(paths) if runs is None else runs
    plan = load_plan(paths[0]) if len(paths) == 1 else None
    fixed_note = ""
    if plan is not None and plan.family != "configurations":
        plan, fixed_note = None, _UNCOUNTED.format(family=plan.family)
    configs = configurations(runs)
    comparisons = compare(configs, baseline, options, plan)
    rows = comparison_rows(comparisons)
    base = next((c for c in configs if c.baseline), None)
    min_effect = comparisons[0].min_effect if comparisons else float("nan")
    alpha = plan.alpha if plan else options.alpha
    used = [c.baseline_n for c in comparisons if c.baseline_n]  # a planned look's seeds
    base_n = max(used) if used else len(base.ok) if base else 0
    header = comparison_header(base.label if base else "(none)", base_n, min_effect, alpha, plan)
    header += fixed_note
    text = "\n".join([header, "", *comparison_markdown(rows)]) + "\n"
    if out_dir is not None:
        out = Path(out_dir)
        with (out / "compare.csv").open("w", newline="") as f:
            columns = list(rows[0]) if rows else ["configuration"]
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        (out / "compare.md").write_text(text)
        if plot and comparisons:
            compare_plot(comparisons, out / "compare.png")
    return rows, text


def write_effects(
    paths: list[str | Path],
    out_dir: str | Path | None,
    reference: dict[str, str] | None = None,
    plot: bool = True,
    runs: list[Run] | None = None,
    options: Options | None = None,
) -> tuple[Effects, str]:
    """The effects of the grid the runs under ``paths`` (or ``runs``) form; ``effects.csv``,
    ``effects.md`` and ``effects.png`` in ``out_dir`` where they form one. Returns the effects
    and the markdown text (for a set of runs that is no grid: one line saying why)."""
    runs = read_runs(paths) if runs is None else runs
    plan = load_plan(paths[0]) if len(paths) == 1 else None
    result = effects(configurations(runs), reference, options, plan)
    header = effects_header(result)
    if plan is not None and result.plan is None and not result.grid.why_not:
        header += _UNCOUNTED.format(family=plan.family)
    text = effects_markdown(result, header)
    if out_dir is not None and not result.grid.why_not:
        out = Path(out_dir)
        with (out / "effects.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(effect_rows(result))
        (out / "effects.md").write_text(text)
        if plot:
            shown = []
            for r in result.family:
                shown.append(r)
                if r.kind == "main":
                    shown += simple_effects_of(result, r)
            effects_plot(shown, result.min_effect, out / "effects.png")
    return result, text
