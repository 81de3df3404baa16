"""A sweep on a local Ray cluster through Hydra's Ray launcher, beside the same sweep run by the
basic launcher: the same job folders, the same per-job results, each job with its own ranks.

    # an environment of its own: hydra-ray-launcher pins cloudpickle<3, the joblib launcher needs 3+
    python -m venv .venv-ray && .venv-ray/bin/pip install -e ".[ray]"
    python benchmarks/ray_sweep.py --python .venv-ray/bin/python [--out DIR]

Not in the test suite: a local Ray cluster takes ~20 s to start and Ray adds ~390 MB to an
environment (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY  # noqa: E402 - the suite's tiny job: a run takes about a second

SWEEP = [
    "act=relu,swish",
    "dist.nproc_per_node=1,2",
    "trainer.deterministic=true",
]  # 4 jobs, two of them with 2 ranks


def sweep(python: str, out: Path, launcher: list[str]) -> float:
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    cmd = [python, "-m", "densenet_exp", "-m", *TINY, *SWEEP, *launcher, f"hydra.sweep.dir={out}"]
    # one thread a job under both (Ray gives a task OMP_NUM_THREADS=1): the same sums, the same bits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def jobs(out: Path) -> dict[str, dict]:
    return {
        p.name: json.loads((p / "metrics.json").read_text())
        for p in sorted(out.iterdir())
        if (p / "metrics.json").is_file()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="a Python with hydra-ray-launcher")
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "ray_sweep")
    args = parser.parse_args()
    basic_s = sweep(args.python, args.out / "basic", [])
    ray_s = sweep(args.python, args.out / "ray", ["hydra/launcher=ray"])
    basic, ray = jobs(args.out / "basic"), jobs(args.out / "ray")
    print(f"basic launcher: {len(basic)} jobs in {basic_s:.1f} s; ray: {len(ray)} in {ray_s:.1f} s")
    print("| job | world size (basic / ray) | final val loss (basic / ray) | same top-1 and loss |")
    print("|---|---|---|---|")
    for name in sorted(set(basic) | set(ray)):
        b, r = basic.get(name, {}), ray.get(name, {})
        keys = ("final_val_top1", "final_val_loss")
        same = bool(b) and bool(r) and all(b.get(k) == r.get(k) for k in keys)
        print(
            f"| {name} | {b.get('world_size')} / {r.get('world_size')} | "
            f"{b.get('final_val_loss')} / {r.get('final_val_loss')} | {same} |"
        )
    with (args.out / "ray" / "compare.csv").open() as f:
        verdicts = [(row["configuration"], row["verdict"]) for row in csv.DictReader(f)]
    print("ray sweep's comparison:", verdicts)
    if set(basic) != set(ray):
        raise SystemExit("the two launchers named the jobs differently")


if __name__ == "__main__":
    main()
