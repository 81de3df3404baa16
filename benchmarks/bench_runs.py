"""How long the run tools take on a large sweep folder: ``runs summarize``, ``compare`` and
``effects`` on N finished runs.

    python benchmarks/bench_runs.py [--runs 500] [--seeds 10] [--out DIR] [--repeats 3]

Trains one default job (1 epoch) as a template, then writes ``--runs`` copies of it into a grid
of conv (2) x act (5) x model.growth_rate (runs / seeds / 10 levels) with ``--seeds`` seeds a
cell: every file a run has (``.hydra/``, metrics.json, metrics.jsonl, both prediction files), with
its top-1 and per-image predictions redrawn per run so that the statistics have work to do. Each
command is timed in a fresh process (what a user waits for, imports included), and all three in
one process through the CLI's ``main`` (what the sweep's end pays: it reads the runs once).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from densenet_exp import val_predictions

ROOT = Path(__file__).resolve().parents[1]
ACTS = ("relu", "swish", "prelu", "gelu", "mish")


def template(out: Path) -> Path:
    run = out / "template"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "densenet_exp", "trainer.epochs=1", "trainer.progress=false"]
        subprocess.run([*cmd, f"hydra.run.dir={run}"], cwd=ROOT, check=True, capture_output=True)
    return run


def write_grid(src: Path, sweep: Path, runs: int, seeds: int) -> None:
    rng = np.random.default_rng(0)
    config = yaml.safe_load((src / ".hydra" / "config.yaml").read_text())
    hydra = yaml.safe_load((src / ".hydra" / "hydra.yaml").read_text())
    summary = json.loads((src / "metrics.json").read_text())
    history = (src / "metrics.jsonl").read_text()
    predictions = val_predictions.read(src / val_predictions.FINAL_FILE)
    growth = [str(g) for g in range(4, 4 + max(1, runs // seeds // 10))]
    job = 0
    for conv in ("standard", "dsconv"):
        for act in ACTS:
            for g in growth:
                for seed in range(seeds):
                    if job >= runs:
                        return
                    name = f"{job}_conv={conv},act={act},model.growth_rate={g},seed={seed}"
                    run = sweep / name
                    (run / ".hydra").mkdir(parents=True)
                    overrides = [f"conv={conv}", f"act={act}", f"model.growth_rate={g}"]
                    cfg = json.loads(json.dumps(config))
                    cfg["conv"]["type"], cfg["act"]["name"] = conv, act
                    cfg["model"]["growth_rate"], cfg["trainer"]["seed"] = int(g), seed
                    h = json.loads(json.dumps(hydra))
                    h["hydra"]["runtime"]["choices"].update({"conv": conv, "act": act})
                    files = {
                        "overrides.yaml": [*overrides, f"trainer.seed={seed}"],
                        "config.yaml": cfg,
                        "hydra.yaml": h,
                    }
                    for file, data in files.items():
                        (run / ".hydra" / file).write_text(yaml.safe_dump(data))
                    p = 0.85 + 0.02 * (conv == "dsconv") + rng.normal(0, 0.01)
                    correct = rng.random(len(predictions)) < p
                    rows = [{**r, "correct": str(int(c))} for r, c in zip(predictions, correct)]
                    for file in (val_predictions.FINAL_FILE, val_predictions.BEST_FILE):
                        with (run / file).open("w", newline="") as f:
                            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                            writer.writeheader()
                            writer.writerows(rows)
                    top1 = float(correct.mean())
                    metrics = {**summary, "final_val_top1": top1, "best_val_top1": top1}
                    (run / "metrics.json").write_text(json.dumps(metrics))
                    (run / "metrics.jsonl").write_text(history)
                    job += 1


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "densenet_exp.runs", *args]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "bench_runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = args.out / f"grid_{args.runs}"
    if sweep.exists():
        shutil.rmtree(sweep)
    write_grid(template(args.out), sweep, args.runs, args.seeds)
    print(f"{args.runs} runs in {sweep}; seconds, median of {args.repeats} (each a new process)")
    commands = {
        "summarize": ["summarize", str(sweep)],
        "compare": ["compare", str(sweep)],
        "effects": ["effects", str(sweep)],
    }
    total = 0.0
    for name, cmd in commands.items():
        median = float(np.median([timed(cmd) for _ in range(args.repeats)]))
        total += median
        print(f"| {name} | {median:.2f} |")
    print(f"| the three | {total:.2f} |")
    from densenet_exp.sweeps import finish_sweep

    start = time.perf_counter()
    finish_sweep(sweep)
    print(f"| a sweep's end (one process: summary, comparison, effects, pictures) | "
          f"{time.perf_counter() - start:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
