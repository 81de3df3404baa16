"""A/A calibration of ``runs compare`` on real runs: one configuration against itself.

    python benchmarks/aa_calibration.py [--seeds 20] [--epochs 3] [--splits 200]
                                        [--counts 1 2 3 5 10] [--out DIR]

Trains the default job at ``--epochs`` twice over, as two sweeps of ``--seeds`` seeds each with
disjoint seed numbers, under two values of a key that never acts (``data.on_bad_image=skip`` and
``error``: the embedded digits have no bad image), so that ``compare`` sees two configurations that
differ in nothing. Then, for each seed count n, it draws ``--splits`` random n-seed subsets of each
side and compares them through the CLI (``runs compare RUN... --out``): every "better" or "worse"
is a false alarm, and a calibrated comparison raises one in at most 5% of the splits. Each mode of
the test is tried: the default (Welch), ``--pooled`` and ``--images``.

The splits of one n reuse seeds (20 seeds give C(20, n) subsets), so the rates are less certain
than their binomial intervals say; the simulation in tests/test_verdicts.py has independent draws.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from densenet_exp.runs import find_runs, main

ROOT = Path(__file__).resolve().parents[1]
MODES = {"welch": [], "pooled": ["--pooled"], "images": ["--images"]}


def train(out: Path, seeds: int, epochs: int) -> None:
    for label, first in (("skip", 0), ("error", seeds)):
        sweep = out / label
        if (sweep / "summary.csv").is_file():
            continue  # trained by an earlier call
        seed_range = f"trainer.seed=range({first},{first + seeds})"
        cmd = [
            sys.executable,
            "-m",
            "densenet_exp",
            "-m",
            f"trainer.epochs={epochs}",
            f"data.on_bad_image={label}",
            seed_range,
            "trainer.progress=false",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
        ]
        print(" ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def verdict(runs: list[Path], mode: list[str], scratch: Path) -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["compare", *map(str, runs), "--out", str(scratch), "--no-plot", *mode])
    if code != 0:
        raise SystemExit(f"runs compare failed on {runs}")
    with (scratch / "compare.csv").open() as f:
        return next(csv.DictReader(f))["verdict"]


def interval(k: int, n: int) -> str:
    """Wilson 95% interval of a rate k / n."""
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{max(0.0, centre - half):.3f}, {min(1.0, centre + half):.3f}]"


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--splits", type=int, default=200, help="random splits per seed count")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "aa_calibration")
    args = parser.parse_args()
    train(args.out, args.seeds, args.epochs)
    sides = [[r.path for r in find_runs(args.out / label)] for label in ("skip", "error")]
    rng = random.Random(0)
    print(f"\n{args.seeds} + {args.seeds} seeds, {args.splits} random splits per seed count")
    print("| seeds per side | mode | better/worse | rate | 95% interval |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            splits = [
                [p for side in sides for p in rng.sample(side, n)] for _ in range(args.splits)
            ]
            for name, mode in MODES.items():
                called = sum(verdict(s, mode, Path(tmp)) in ("better", "worse") for s in splits)
                rate = called / args.splits
                print(
                    f"| {n} | {name} | {called} of {args.splits} | {rate:.3f} | "
                    f"{interval(called, args.splits)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main_()
