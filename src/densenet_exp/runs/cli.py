"""Run-directory tools: summarize a sweep, compare configurations, diff two runs, rerun a run.

    python -m densenet_exp.runs summarize SWEEP_DIR [--cost macs|img_per_s]
    python -m densenet_exp.runs compare SWEEP_OR_RUNS... [--baseline CONFIG] [--min-effect D]
                                    [--pooled] [--images] [--out DIR]
    python -m densenet_exp.runs extend SWEEP [--max-seeds N] [--min-effect D] [--once]
    python -m densenet_exp.runs diff RUN_A RUN_B
    python -m densenet_exp.runs rerun RUN_DIR [overrides ...] [--out DIR]

A configuration is everything but the seed, and the seed is the unit of replication: ``compare``
tests every configuration against a baseline (default: the one of the config's default choices,
else the first) with Welch's t on the seeds' final top-1, Holm over the family, and says better,
worse, equivalent within ±min-effect, or undecided with the seeds that would decide it; ``extend``
trains those seeds, at planned looks that keep the error rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .compare import Options
from .diff import diff_runs, format_diff, rerun
from .extend import extend
from .plots import COSTS
from .records import load_run
from .report import write_compare, write_summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m densenet_exp.runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
    e = sub.add_parser("extend", help="more seeds where the comparison is open, at planned looks")
    e.add_argument("dir", type=Path, help="a sweep folder (with multirun.yaml)")
    e.add_argument("--max-seeds", type=_positive_int, help="seeds at the last look (default 4x)")
    e.add_argument("--baseline", help="the baseline configuration's name (default as compare)")
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
    return parser


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


def _test_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--images",
        action="store_true",
        help="add the validation images' sampling variance (generalise to new images)",
    )


def _options(args: argparse.Namespace) -> Options:
    return Options(min_effect=args.min_effect, pooled=args.pooled, images=args.images)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "summarize":
            rows = write_summary(args.dir, plot=not args.no_plot, cost=args.cost)
            print((args.dir / "summary.md").read_text(), end="")
            print(
                f"{len(rows)} run(s); wrote {args.dir / 'summary.csv'}, summary_by_config.csv, "
                "summary.md" + ("" if args.no_plot else ", summary.png")
            )
        elif args.command == "compare":
            out = args.out or (args.paths[0] if len(args.paths) == 1 else None)
            _, text = write_compare(
                args.paths, out, args.baseline, plot=not args.no_plot, options=_options(args)
            )
            print(text, end="")
            if out is not None:
                print(
                    f"wrote {out / 'compare.csv'}, compare.md"
                    + ("" if args.no_plot else ", compare.png")
                )
        elif args.command == "extend":
            plan = extend(
                args.dir,
                args.max_seeds,
                args.min_effect,
                args.baseline,
                _options(args),
                once=args.once,
                plot=not args.no_plot,
            )
            print((args.dir / "compare.md").read_text(), end="")
            print(f"look {plan.taken} of {len(plan.looks)}; wrote {args.dir / 'compare.md'}")
        elif args.command == "diff":
            a, b = load_run(args.run_a), load_run(args.run_b)
            d = diff_runs(a, b)
            print(json.dumps(d, indent=2, default=str) if args.json else format_diff(a, b, d))
        else:
            print(f"rerun written to {rerun(args.run, args.overrides, args.out)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
