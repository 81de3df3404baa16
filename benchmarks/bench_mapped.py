#!/usr/bin/env python
"""A ``data.cache=disk`` split read from a cold file: the train loader with and without its
read-ahead thread, beside a stand-in for the model's step.

The file's pages are dropped from the page cache before each pass (``posix_fadvise``), so every
batch faults its images in from the disk, in random order, as the first epoch of a run whose
cache is larger than RAM would. The model's step is a ``time.sleep`` (it holds no core and no
GIL, as a GPU step does not): what the loader adds on top of it is what a run would wait for.

    python benchmarks/bench_mapped.py                       # 3000 images of 256 px, batch 64
    python benchmarks/bench_mapped.py --step-ms 0 50 100
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_input import cpu_flags

from densenet_exp.data.cache import DecodedSplit
from densenet_exp.data.readahead import ReadAhead


def mapped_split(path: Path, n: int, side: int) -> DecodedSplit:
    images = torch.from_file(str(path), shared=False, size=n * 3 * side * side, dtype=torch.uint8)
    zeros = torch.zeros(n, 2, dtype=torch.int64)
    return DecodedSplit(
        images.view(n, 3, side, side), zeros[:, 0], zeros, [("x", 0)] * n, ["a"], None, "whole"
    )


def rate(path: Path, n: int, side: int, batch: int, ahead: bool, step_s: float) -> float:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: the next reads go to the disk
    os.close(fd)
    split = mapped_split(path, n, side)
    order = RandomSampler(split, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(split, batch_size=batch, sampler=order, collate_fn=lambda b: b)
    images, t = 0, time.perf_counter()
    for _, y, _, _ in ReadAhead(loader) if ahead else loader:
        images += len(y)
        time.sleep(step_s)
    return images / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--side", type=int, default=256, help="stored side (224 px / 0.875)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--step-ms", type=float, nargs="+", default=[0.0, 50.0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dir", type=Path, default=None, help="where the file goes (default: /tmp)")
    args = p.parse_args()
    n, side = args.images, args.side
    print(f"# CPU: {cpu_flags()} | torch {torch.__version__} | {' '.join(sys.argv[1:])}")
    print("| step ms / batch | the step alone img/s | plain loader img/s | read-ahead img/s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "split.u8"
        data = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 3, side, side))
        data[:] = np.random.default_rng(0).integers(0, 256, side, dtype=np.uint8)
        data.flush()
        del data
        for step_ms in args.step_ms:
            plain, ahead = [], []
            for _ in range(args.rounds):  # alternated: the disk's speed drifts too
                plain.append(rate(path, n, side, args.batch, False, step_ms / 1000))
                ahead.append(rate(path, n, side, args.batch, True, step_ms / 1000))
            ideal = args.batch / (step_ms / 1000) if step_ms else float("inf")
            print(
                f"| {step_ms:.0f} | {ideal:.0f} | {' / '.join(f'{r:.0f}' for r in plain)} | "
                f"{' / '.join(f'{r:.0f}' for r in ahead)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
