"""Run-directory tools: summarize a sweep, compare configurations, effects per factor, more
seeds, diff two runs, rerun a run.

    python -m densenet_exp.runs summarize SWEEP_DIR [--cost macs|img_per_s]
    python -m densenet_exp.runs compare SWEEP_OR_RUNS... [--baseline CONFIG] [--min-effect D]
                                    [--pooled] [--images] [--out DIR]
    python -m densenet_exp.runs effects SWEEP_OR_RUNS... [--reference KEY=VALUE ...]
                                    [--min-effect D] [--pooled] [--out DIR]
    python -m densenet_exp.runs extend SWEEP [--by configurations|effects] [--max-seeds N]
                                    [--min-effect D] [--reference KEY=VALUE ...] [--once]
    python -m densenet_exp.runs diff RUN_A RUN_B
    python -m densenet_exp.runs rerun RUN_DIR [overrides ...] [--out DIR]

A configuration is everything but the seed, and the seed is the unit of replication: ``compare``
tests every configuration against a baseline (default: the one of the config's default choices,
else the first) with Welch's t on the seeds' final top-1, Holm over the family, and says better,
worse, equivalent within ±min-effect, or undecided with the seeds that would decide it.
``effects`` reads a grid (two or more swept keys) per factor: each level's effect against the
reference level averaged over the other factors, and the interactions, from contrasts of the
cells' means with Welch-Satterthwaite df, Holm over all of them. ``extend`` trains the seeds that
would decide, at planned looks that keep the error rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runs.compare import Options
from ..runs.diff import diff_runs, format_diff
from ..runs.plots import COSTS
from ..runs.records import load_run
from ..runs.report import write_compare, write_effects, write_summary
from .extend import FAMILIES, extend
from .rerun import rerun


def parser() -> argparse.ArgumentParser:
    """The ``runs`` command line (its commands' help is the docs' reference page too)."""
    top = argparse.ArgumentParser(
        prog="python -m densenet_exp.runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="tables (csv, md) and picture of every run under a folder")
    s.add_argument("dir", type=Path)
    s.add_argument("--no-plot", action="store_true")
    s.add_argument("--cost", choices=sorted(COSTS), default="macs", help="x axis of the picture")
    c = sub.add_parser("compare", help="every configuration against a baseline, with verdicts")
    c.add_argument("paths", type=Path, nargs="+", help="sweep folders or run folders")
    c.add_argument("--baseline", help="the baseline configuration's name, as the table shows it")
    c.add_argument(
        "--out", type=Path, help="where compare.{csv,md,png} go (default: the one folder)"
    )
    c.add_argument("--no-plot", action="store_true")
    _test_options(c)
    f = sub.add_parser(
        "effects", help="main effects and interactions of a grid of configurations, with verdicts"
    )
    f.add_argument("paths", type=Path, nargs="+", help="sweep folders or run folders")
    _reference_option(f)
    f.add_argument(
        "--out", type=Path, help="where effects.{csv,md,png} go (default: the one folder)"
    )
    f.add_argument("--no-plot", action="store_true")
    _test_options(f, images=False)
    e = sub.add_parser("extend", help="more seeds where the answer is open, at planned looks")
    e.add_argument("dir", type=Path, help="a sweep folder (with multirun.yaml)")
    e.add_argument(
        "--by",
        choices=FAMILIES,
        default="configurations",
        help="what the looks decide: each configuration against the baseline (seeds for the "
        "open ones), or the grid's effects (seeds for every cell)",
    )
    e.add_argument("--max-seeds", type=_positive_int, help="seeds at the last look (default 4x)")
    e.add_argument("--baseline", help="the baseline configuration's name (default as compare)")
    _reference_option(e)
    e.add_argument("--once", action="store_true", help="take one look, then stop")
    e.add_argument("--no-plot", action="store_true")
    _test_options(e)
    d = sub.add_parser("diff", help="group choices, config values and metrics of two runs")
    d.add_argument("run_a", type=Path)
    d.add_argument("run_b", type=Path)
    d.add_argument("--json", action="store_true", help="print the diff as JSON")
    r = sub.add_parser("rerun", help="rerun a run with changed overrides, in a new directory")
    r.add_argument("run", type=Path)
    r.add_argument("overrides", nargs="*")
    r.add_argument("--out", type=Path, help="run directory of the rerun (default: outputs/...)")
    return top


def subcommands(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``parser()``'s commands by name (argparse reaches them only through the action holding
    them): the docs' reference page and their checks read each command's own parser."""
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seeds")
    return value


def _effect(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a difference of top-1 in (0, 1)")
    return value


def _level(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE (e.g. act=relu); give --reference after the folders"
        )
    return key, value


def _reference_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        type=_level,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="the reference level of one or more factors, after the folders (default: the "
        "sweep's default level, as compare picks its baseline)",
    )


def _test_options(p: argparse.ArgumentParser, images: bool = True) -> None:
    p.add_argument(
        "--min-effect",
        type=_effect,
        help="the smallest difference of top-1 that matters (default: a tenth of the "
        "baseline's errors): within it is 'equivalent'; seeds are planned to detect it",
    )
    p.add_argument(
        "--pooled",
        action="store_true",
        help="pool the seed variance over the sweep's configurations (more df; equal spreads)",
    )
    if images:
        p.add_argument(
            "--images",
            action="store_true",
            help="add the validation images' sampling variance (generalise to new images)",
        )


def _options(args: argparse.Namespace) -> Options:
    images = getattr(args, "images", False)
    return Options(min_effect=args.min_effect, pooled=args.pooled, images=images)


def _wrote(out: Path | None, stem: str, plot: bool) -> None:
    if out is not None:
        print(f"wrote {out / (stem + '.csv')}, {stem}.md" + (f", {stem}.png" if plot else ""))


def _out(args: argparse.Namespace) -> Path | None:
    """Where compare/effects write: --out, else the one folder given (none for several)."""
    return args.out or (args.paths[0] if len(args.paths) == 1 else None)


def _summarize(args: argparse.Namespace) -> None:
    rows = write_summary(args.dir, plot=not args.no_plot, cost=args.cost)
    print((args.dir / "summary.md").read_text(), end="")
    print(
        f"{len(rows)} run(s); wrote {args.dir / 'summary.csv'}, summary_by_config.csv, "
        "summary.md" + ("" if args.no_plot else ", summary.png")
    )


def _compare(args: argparse.Namespace) -> None:
    out, plot = _out(args), not args.no_plot
    _, text = write_compare(args.paths, out, args.baseline, plot=plot, options=_options(args))
    print(text, end="")
    _wrote(out, "compare", plot)


def _effects(args: argparse.Namespace) -> None:
    out, plot = _out(args), not args.no_plot
    result, text = write_effects(
        args.paths, out, dict(args.reference), plot=plot, options=_options(args)
    )
    print(text, end="")
    _wrote(None if result.grid.why_not else out, "effects", plot)


def _extend(args: argparse.Namespace) -> None:
    plan = extend(
        args.dir,
        args.max_seeds,
        args.min_effect,
        args.baseline,
        _options(args),
        once=args.once,
        plot=not args.no_plot,
        by=args.by,
        reference=dict(args.reference),
    )
    shown = "effects.md" if plan.family == "effects" else "compare.md"
    print((args.dir / shown).read_text(), end="")
    print(f"look {plan.taken} of {len(plan.looks)}; wrote {args.dir / shown}")


def _diff(args: argparse.Namespace) -> None:
    a, b = load_run(args.run_a), load_run(args.run_b)
    d = diff_runs(a, b)
    print(json.dumps(d, indent=2, default=str) if args.json else format_diff(a, b, d))


def _rerun(args: argparse.Namespace) -> None:
    print(f"rerun written to {rerun(args.run, args.overrides, args.out)}")


COMMANDS = {
    "summarize": _summarize,
    "compare": _compare,
    "effects": _effects,
    "extend": _extend,
    "diff": _diff,
    "rerun": _rerun,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
