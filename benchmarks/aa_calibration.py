"""A/A calibration of ``runs compare`` on real runs: one configuration against itself.

    python benchmarks/aa_calibration.py [--seeds 40] [--epochs 3] [--splits 200]
                                        [--counts 1 2 3 5 10] [--out DIR] [--factorial]

Trains the default job at ``--epochs`` over ``--seeds`` seeds (one sweep, joblib with 2 jobs;
skipped when ``--out`` holds that many finished runs already). Then, for each seed count n, it draws
``--splits`` random disjoint pairs of n-seed sets and compares them through the CLI (``runs compare
RUN... --out``). For ``compare`` to see two configurations, each split's runs are copied (their
small files: config, metrics, predictions) with a key that never acts on this data written into
B's copies (``data.on_bad_image: error``; the embedded digits have no bad image). So each
comparison is of identical configurations, and every "better" or "worse" is a false alarm: a
calibrated comparison raises one in at most 5% of the splits. Each mode is tried: the default
(Welch), ``--pooled`` and ``--images``.

The splits of one n share seeds (40 seeds give many splits but only 40 runs), so the rates are
less certain than their binomial intervals say; tests/test_verdicts.py simulates independent runs.

``--factorial``: the same seeds relabelled into a 2x3 grid of identical configurations (n seeds a
cell, ``data.on_bad_image`` skip/error crossed with a label ``aa.cell`` x/y/z written only into the
copies), analysed by ``runs effects``: every table with a ``better`` or ``worse`` main effect or
interaction is a false alarm (tests/test_effects.py simulates the same with known truth).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from densenet_exp.runs import find_runs
from densenet_exp.sweeps.cli import main
from densenet_exp.val_predictions import FINAL_FILE

ROOT = Path(__file__).resolve().parents[1]
MODES = {"welch": [], "pooled": ["--pooled"], "images": ["--images"]}
COPIED = ("metrics.json", "metrics.jsonl", FINAL_FILE)


def finished(out: Path) -> list[Path]:
    return [r.path for r in find_runs(out) if r.status == "ok"] if out.is_dir() else []


def train(out: Path, seeds: int, epochs: int) -> None:
    if len(finished(out)) >= seeds:
        return  # trained by an earlier call
    cmd = [
        sys.executable,
        "-m",
        "densenet_exp",
        "-m",
        f"trainer.epochs={epochs}",
        f"trainer.seed=range({seeds})",
        "trainer.progress=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={out / 'runs'}",
    ]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def relabelled(run: Path, dest: Path, label: str, cell: str | None = None) -> Path:
    """A copy of ``run``'s small files whose config says ``data.on_bad_image: label`` (and, for
    the factorial case, ``aa.cell: cell``)."""
    (dest / ".hydra").mkdir(parents=True)
    for name in COPIED:
        shutil.copy(run / name, dest / name)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"]["on_bad_image"] = label
    if cell is not None:
        config["aa"] = {"cell": cell}
    (dest / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    overrides = [o for o in overrides if not o.startswith("data.on_bad_image=")]
    overrides.append(f"data.on_bad_image={label}")
    if cell is not None:
        overrides.append(f"+aa.cell={cell}")
    (dest / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    shutil.copy(run / ".hydra" / "hydra.yaml", dest / ".hydra" / "hydra.yaml")
    return dest


def verdict(a: list[Path], b: list[Path], mode: list[str], scratch: Path) -> str:
    if scratch.exists():
        shutil.rmtree(scratch)
    runs = [relabelled(r, scratch / f"a{i}", "skip") for i, r in enumerate(a)]
    runs += [relabelled(r, scratch / f"b{i}", "error") for i, r in enumerate(b)]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["compare", *map(str, runs), "--out", str(scratch), "--no-plot", *mode])
    if code != 0:
        raise SystemExit(f"runs compare failed on {a} vs {b}")
    with (scratch / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1 or rows[0]["baseline"] != "data.on_bad_image=skip":
        raise SystemExit(f"expected one comparison against the skip side, got {rows}")
    return rows[0]["verdict"]


def factorial_verdict(runs: list[Path], n: int, scratch: Path) -> bool:
    """Whether ``runs effects`` calls any effect of a 2x3 grid of identical cells better/worse."""
    if scratch.exists():
        shutil.rmtree(scratch)
    copies = []
    for k, run in enumerate(runs):
        cell = k // n  # n seeds a cell: skip/x, skip/y, skip/z, error/x, ...
        label, name = ("skip", "error")[cell // 3], "xyz"[cell % 3]
        copies.append(relabelled(run, scratch / f"r{k}", label, name))
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["effects", *map(str, copies), "--out", str(scratch), "--no-plot"])
    if code != 0 or not (scratch / "effects.csv").is_file():
        raise SystemExit(f"runs effects failed on {runs}")
    with (scratch / "effects.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] != "simple"]
    if len(rows) != 5:
        raise SystemExit(f"expected a 2x3 grid's 5 effects, got {[r['effect'] for r in rows]}")
    return any(r["verdict"] in ("better", "worse") for r in rows)


def interval(k: int, n: int) -> str:
    """Wilson 95% interval of a rate k / n."""
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{max(0.0, centre - half):.3f}, {min(1.0, centre + half):.3f}]"


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--splits", type=int, default=200, help="random splits per seed count")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "aa_calibration")
    parser.add_argument(
        "--factorial", action="store_true", help="a 2x3 grid through `runs effects` instead"
    )
    args = parser.parse_args()
    train(args.out, args.seeds, args.epochs)
    population = finished(args.out)
    rng = random.Random(0)
    if args.factorial:
        factorial(population, args.counts, args.splits, rng)
        return
    print(f"\n{len(population)} seeds, {args.splits} random disjoint splits per seed count")
    print("| seeds per side | mode | better/worse | rate | 95% interval |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            splits = [rng.sample(population, 2 * n) for _ in range(args.splits)]
            for name, mode in MODES.items():
                called = sum(
                    verdict(s[:n], s[n:], mode, Path(tmp) / "split") in ("better", "worse")
                    for s in splits
                )
                print(
                    f"| {n} | {name} | {called} of {args.splits} | {called / args.splits:.3f} | "
                    f"{interval(called, args.splits)} |",
                    flush=True,
                )


def factorial(population: list[Path], counts: list[int], splits: int, rng: random.Random) -> None:
    print(f"\n{len(population)} seeds relabelled into a 2x3 grid, {splits} random draws per count")
    print("| seeds per cell | tables with a better/worse effect | rate | 95% interval |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            if 6 * n > len(population):
                print(f"| {n} | needs {6 * n} seeds, {len(population)} trained | | |")
                continue
            called = sum(
                factorial_verdict(rng.sample(population, 6 * n), n, Path(tmp) / "grid")
                for _ in range(splits)
            )
            print(
                f"| {n} | {called} of {splits} | {called / splits:.3f} | "
                f"{interval(called, splits)} |",
                flush=True,
            )


if __name__ == "__main__":
    main_()
