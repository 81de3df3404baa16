"""Run-directory tools: summarize a sweep, compare configurations, diff two runs, rerun a run.

    python -m densenet_exp.runs summarize SWEEP_DIR [--cost macs|img_per_s]
    python -m densenet_exp.runs compare SWEEP_OR_RUNS... [--baseline CONFIG] [--out DIR]
    python -m densenet_exp.runs diff RUN_A RUN_B
    python -m densenet_exp.runs rerun RUN_DIR [overrides ...] [--out DIR]

A configuration is everything but the seed: the runs of one configuration are pooled, and
``compare`` tests every configuration against a baseline (default: the one of the config's default
choices, else the first) with seeds and validation images both resampled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .diff import diff_runs, format_diff, rerun
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
    d = sub.add_parser("diff", help="group choices, config values and metrics of two runs")
    d.add_argument("run_a", type=Path)
    d.add_argument("run_b", type=Path)
    d.add_argument("--json", action="store_true", help="print the diff as JSON")
    r = sub.add_parser("rerun", help="rerun a run with changed overrides, in a new directory")
    r.add_argument("run", type=Path)
    r.add_argument("overrides", nargs="*")
    r.add_argument("--out", type=Path, help="run directory of the rerun (default: outputs/...)")
    return parser


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
            _, text = write_compare(args.paths, out, args.baseline, plot=not args.no_plot)
            print(text, end="")
            if out is not None:
                print(
                    f"wrote {out / 'compare.csv'}, compare.md"
                    + ("" if args.no_plot else ", compare.png")
                )
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
