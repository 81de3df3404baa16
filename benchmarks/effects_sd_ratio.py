"""Where the effects' Welch-Satterthwaite family holds and where it starts to slip: the share of
grids of identical configurations in which ``runs effects`` would call any main effect or
interaction better or worse, by grid, seeds per cell and how far one cell's seed SD exceeds the
others'.

    python benchmarks/effects_sd_ratio.py [--reps 40000] [--seed 0]

Normal seeds (the statistics do not care where the spread comes from; tests/test_effects.py adds
per-image structure), the grid's contrasts as ``effects`` builds them, each with its Welch-
Satterthwaite t; "any false verdict" in a Holm family happens exactly when its first step rejects,
so the rate is that of the smallest one-sided p against alpha / (2 x effects), vectorized here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_effects import fake_grid

from densenet_exp.runs.effects import SIMPLE, contrasts

ALPHA = 0.05


def rate(shape: tuple[int, ...], seeds: int, sds: np.ndarray, reps: int, rng) -> float:
    grid = fake_grid(shape)
    cells = list(grid.cells)
    family = [r for r in contrasts(grid) if r.kind != SIMPLE]
    c = np.array([[r.coefs.get(cell, 0.0) for cell in cells] for r in family])
    x = rng.normal(0, 1, (reps, len(cells), seeds)) * sds[None, :, None]
    means, var = x.mean(2), x.var(2, ddof=1) / seeds
    a = var[:, None, :] * c[None] ** 2  # reps x effects x cells: c_i^2 s_i^2 / n_i
    total = a.sum(2)
    df = total**2 / (a**2 / (seeds - 1)).sum(2)
    t = (means @ c.T) / np.sqrt(total)
    p = special.stdtr(df, -np.abs(t))  # the likelier direction's one-sided p
    return float((p <= ALPHA / (2 * len(family))).any(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ratios = (1, 2, 5, 10, 20, 100)
    print(f"rate of grids with a false better/worse, {args.reps} grids each; one cell's SD x ratio")
    print("| grid | seeds a cell | " + " | ".join(f"x{r}" for r in ratios) + " |")
    print("|---|---|" + "---|" * len(ratios))
    for shape in ((2, 2), (2, 3), (2, 2, 2)):
        k = int(np.prod(shape))
        for seeds in (2, 3, 5, 10):
            row = [rate(shape, seeds, np.r_[np.ones(k - 1), r], args.reps, rng) for r in ratios]
            name = "x".join(map(str, shape))
            print(f"| {name} | {seeds} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
