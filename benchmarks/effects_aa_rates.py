"""The false-verdict rates behind ``tests/test_effects.py``'s A/A assertions, printed: the same
simulated grids (same generator seeds), the same family as ``runs effects`` decides it.

    python benchmarks/effects_aa_rates.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_effects as t

from densenet_exp.runs.effects import contrasts
from densenet_exp.runs.verdicts import Verdict


def main() -> None:
    counts = (2, 3, 5, 10)
    print(f"share of {t.REPS} A/A grids with any better/worse effect (cell SDs spanning 10x)")
    print("| grid | " + " | ".join(f"{n} seeds a cell" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for shape in ((2, 2), (2, 3), (2, 2, 2)):
        rates = []
        for seeds in counts:
            rng = np.random.default_rng(100 * len(shape) + 10 * shape[-1] + seeds)
            grid = t.fake_grid(shape)
            rows, cells = contrasts(grid), list(grid.cells)
            sds = t.spread_sds(rng, len(cells))  # drawn in the test's order
            x = t.Cells(rng).top1(t.REPS, sds, seeds)
            called = [
                any(
                    d.verdict in (Verdict.better, Verdict.worse)
                    for d in t.family_decisions(
                        grid, rows, {c: x[r, k] for k, c in enumerate(cells)}
                    )
                )
                for r in range(t.REPS)
            ]
            rates.append(float(np.mean(called)))
        print(f"| {'x'.join(map(str, shape))} | " + " | ".join(f"{v:.3f}" for v in rates) + " |")


if __name__ == "__main__":
    main()
