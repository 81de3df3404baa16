"""One sweep under several launchers, side by side in one run: wall time from the command's start
to its end (summary, comparison and effects included), and each job's own wall time.

    python benchmarks/bench_sweep.py [--launchers basic joblib slots] [--epochs 3]
                                     [--out DIR] [-- EXTRA OVERRIDES]

The sweep is the worked example's (docs/worked-example.md): ``experiment=ablation_conv_act``
(conv x act x 3 seeds, 18 jobs) at ``--epochs``. joblib runs ``n_jobs`` = the cores this process
may use; slots uses its defaults (one job a core on a machine without GPUs, one a GPU on a GPU
machine). Launchers run one after the
other, never at once, so that each has the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))
    return f"{model.group(1) if model else '?'}; {' '.join(flags)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launchers", nargs="+", default=["basic", "joblib", "slots"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "bench_sweep")
    parser.add_argument("extra", nargs="*", help="more overrides for every sweep")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    launchers = {
        "basic": [],
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cores}"],
        "slots": ["hydra/launcher=slots"],
    }
    print(f"# {cores} cores ({cpu_flags()}) | epochs {args.epochs} | {' '.join(args.extra)}")
    print("| launcher | jobs | sweep wall s | mean job wall_s | vs basic |")
    print("|---|---|---|---|---|")
    first = None
    for name in args.launchers:
        sweep = args.out / name
        cmd = [sys.executable, "-m", "densenet_exp", "-m", "experiment=ablation_conv_act"]
        cmd += [f"trainer.epochs={args.epochs}", "trainer.progress=false", *launchers[name]]
        cmd += [f"hydra.sweep.dir={sweep}", *args.extra]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        walls = [json.loads(p.read_text())["wall_s"] for p in sweep.glob("*/metrics.json")]
        first = first or wall
        print(
            f"| {name} | {len(walls)} | {wall:.1f} | {sum(walls) / len(walls):.1f} | "
            f"{first / wall:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
