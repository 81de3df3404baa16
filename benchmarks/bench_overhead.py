#!/usr/bin/env python
"""The training loop's own cost: the engine against a bare loop over the same data and model.

Both run the default small model on the same DataLoader (data=synthetic, 16 px, batch 64), the same
optimizer and schedule; the bare loop is forward, loss, backward, step and nothing else. The gap is
what the engine adds per step (precision policy, gradient norm, lagged loss check, scheduler,
logging, checkpoint bookkeeping): the issue's target is under 5% on CPU.

    python benchmarks/bench_overhead.py [--rounds 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def compose(epochs: int):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import densenet_exp.__main__  # noqa: F401 - schema and resolvers
    from densenet_exp.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hcompose(
            "config",
            overrides=[
                "data=synthetic",
                "data.image_size=16",
                "data.batch_size=64",
                "data.synthetic_train_size=1408",
                "data.synthetic_val_size=64",
                f"trainer.epochs={epochs}",
                "trainer.progress=false",
                "trainer.device=cpu",
            ],
        )
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def engine_img_per_s(cfg: dict) -> float:
    from densenet_exp import train

    with tempfile.TemporaryDirectory() as tmp:
        return train(cfg, Path(tmp))["img_per_s"]


def bare_img_per_s(cfg: dict) -> float:
    import torch

    from densenet_exp.data import build_datasets, build_loaders
    from densenet_exp.models import build_model
    from densenet_exp.optim import build_optimizer, build_scheduler

    torch.manual_seed(cfg["trainer"]["seed"])
    bundle = build_datasets(cfg["data"], seed=cfg["trainer"]["seed"])
    model = build_model(cfg, num_classes=len(bundle.classes))
    opt = build_optimizer(model, cfg["optim"])
    loader, _, sampler = build_loaders(bundle, cfg["data"], 0, 1, 0, torch.device("cpu"))
    epochs = cfg["trainer"]["epochs"]
    sched = build_scheduler(opt, cfg["sched"], len(loader), epochs * len(loader))
    seen, elapsed = 0, 0.0
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t = time.perf_counter()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            seen += len(y)
        elapsed += time.perf_counter() - t
    return seen / elapsed


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    import logging

    logging.disable(logging.INFO)
    cfg = compose(args.epochs)
    bare, engine = [], []
    for _ in range(args.rounds):  # alternate, so drift in machine load hits both
        bare.append(bare_img_per_s(cfg))
        engine.append(engine_img_per_s(cfg))
    b, e = statistics.median(bare), statistics.median(engine)
    print(
        f"bare loop {b:.1f} img/s | engine {e:.1f} img/s | engine overhead {100 * (1 - e / b):.1f}%"
    )
    print(f"rounds: bare {[round(v, 1) for v in bare]}, engine {[round(v, 1) for v in engine]}")


if __name__ == "__main__":
    main()
