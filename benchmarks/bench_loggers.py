#!/usr/bin/env python
"""What each logger costs a run: wall time of the same job under logger=none, tensorboard,
mlflow and [tensorboard,mlflow], side by side; plus what the `mlflow` extra adds to an install.

Each round runs every logger once, in turn, as a user would (``python -m densenet_exp ...``: the
interpreter, imports, the run, the files); MLflow writes a SQLite store of its own per round, so
every round's first MLflow run also makes the database. The table gives the median over rounds
of the process's wall time and of ``metrics.json``'s ``wall_s`` (set-up to summary, in the rank).

    python benchmarks/bench_loggers.py [--rounds 3] [--epochs 3] [--log-every 50]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGGERS = ["none", "tensorboard", "mlflow", "[tensorboard,mlflow]"]


def run_once(logger: str, epochs: int, log_every: int, tmp: Path, n: int) -> tuple[float, float]:
    run_dir = tmp / f"run{n}"
    args = [
        f"logger={logger}",
        f"trainer.epochs={epochs}",
        f"trainer.log_every_n_steps={log_every}",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    if "mlflow" in logger:
        args.append(f"logger.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "densenet_exp", *args],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    return wall, json.loads((run_dir / "metrics.json").read_text())["wall_s"]


def import_time(module: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _name(n: str) -> str:
    return re.sub(r"[-_.]+", "-", n).lower()


def extra_footprint() -> tuple[list[str], float]:
    """The distributions only mlflow-skinny brings (nothing else installed needs them), and
    their size on disk in MB."""
    from packaging.requirements import Requirement

    dists = {_name(d.metadata["Name"]): d for d in md.distributions()}

    def closure(root: str) -> set[str]:
        seen, todo = set(), [root]
        while todo:
            n = todo.pop()
            if n in seen or n not in dists:
                continue
            seen.add(n)
            for r in dists[n].requires or []:
                req = Requirement(r)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(_name(req.name))
        return seen

    others: set[str] = set()
    for root in ("densenet-exp", "hydra-optuna-sweeper", "hydra-joblib-launcher", "pytest"):
        others |= closure(root)
    others |= closure("hydra-submitit-launcher") | closure("pytest-xdist") | closure("ruff")
    only = sorted(closure("mlflow-skinny") - others)
    size = 0
    for n in only:
        for f in dists[n].files or []:
            with contextlib.suppress(OSError):  # a file the record names but pip removed
                size += os.path.getsize(dists[n].locate_file(f))
    return only, size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args()
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"avx512_bf16|amx\w*", cpu)))
    print(f"# {os.cpu_count()} CPUs, flags {' '.join(flags) or '(no avx512_bf16/amx)'} | {args}")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in LOGGERS}
    n = 0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for logger in LOGGERS:
                n += 1
                results[logger].append(run_once(logger, args.epochs, args.log_every, Path(tmp), n))
    base = statistics.median(w for w, _ in results["none"])
    print("| logger | process wall s (median) | vs none | run wall_s (median) |")
    print("|---|---|---|---|")
    for logger, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        inner = statistics.median(s for _, s in rows)
        print(f"| {logger} | {wall:.2f} | {wall / base:.2f}x | {inner:.2f} |")
    mlflow_s, torch_s = import_time("mlflow"), import_time("torch")
    print(f"\nimport mlflow: {mlflow_s:.2f} s (python -c; import torch: {torch_s:.2f} s)")
    only, mb = extra_footprint()
    print(f"the mlflow extra adds {len(only)} distributions, {mb:.0f} MB: {' '.join(only)}")


if __name__ == "__main__":
    main()
