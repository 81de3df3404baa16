#!/usr/bin/env python
"""Input pipeline throughput: the loader alone, the model alone, and training end to end.

For each data configuration and each pipeline variant (``data.cache`` x ``data.augment_on``, and
on a GPU ``data.decode=gpu``):

- set-up s: building the run's components twice (a cache decodes in it; a disk cache only the
  first time);
- loader img/s: one pass over the train loader, including the batch augmentation on the device
  when the split is cached (what the model waits for), nothing else;
- model img/s: the training step alone (forward, loss, backward, optimizer step) on one batch
  that is already on the device, repeated; measured before, between and after the real runs;
- end-to-end img/s: a real run (``densenet_exp.train``), its ``img_per_s`` (training time only:
  evaluation is not counted), ``--rounds`` of them, each run's ratio to the mean of the model
  measurements right before and right after it, and the median of those ratios.

    python benchmarks/bench_input.py                      # the default job, as make run runs it
    python benchmarks/bench_input.py --jpeg --steps 8     # + a JPEG folder, densenet121 at 224 px
    python benchmarks/bench_input.py --device cuda --jpeg --batch 256 --amp O1

Timings on a shared VM drift: the variants of one configuration run back to back in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {
    "folder, per-image loader (cache=none)": ["data.cache=none", "data.augment_on=loader"],
    "cache=none, augment_on=device (decoded in the loader)": [
        "data.cache=none",
        "data.augment_on=device",
    ],
    "cache=ram, augment_on=device": ["data.cache=ram", "data.augment_on=device"],
    "cache=disk, augment_on=device (a file, mapped)": ["data.cache=disk", "data.augment_on=device"],
}
GPU_VARIANTS = {"cache=none, decode=gpu (nvJPEG)": ["data.cache=none", "data.decode=gpu"]}


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import densenet_exp.__main__  # noqa: F401 - registers the schema and resolvers
    from densenet_exp.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def write_jpeg_folder(root: Path, n_train: int, n_val: int, classes: int = 4) -> Path:
    """Photo-like JPEGs (smooth colour fields plus noise) of mixed sizes around 300 x 250."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = i % classes
            w, h = int(rng.integers(240, 420)), int(rng.integers(200, 360))
            yy, xx = np.mgrid[0:h, 0:w]
            red, green = 128 + 100 * np.sin(xx / (20 + 10 * c)), 128 + 100 * np.cos(yy / 30)
            base = np.stack([red, green, np.full_like(red, 90 + 40 * c)], -1)
            pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def loader_rate(cfg) -> tuple[float, float]:
    """(img/s of one pass over the train loader, with the device-side augmentation if any;
    seconds to set up, the decoding of a cached split included)."""
    import torch

    from densenet_exp.config import to_typed
    from densenet_exp.distributed import DistContext, resolve_device
    from densenet_exp.engine.build import build

    device = resolve_device(str(cfg.trainer.device))
    t = time.perf_counter()
    c = build(to_typed(cfg), DistContext(device=device))
    setup = time.perf_counter() - t
    n, t = 0, time.perf_counter()
    for batch in c.train.epoch(0):  # to the device and augmented there, as training reads it
        n += len(batch.y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t), setup


def model_rate(cfg, steps: int) -> float:
    """img/s of the training step alone, on one batch already on the device."""
    import torch

    from densenet_exp.config import to_typed
    from densenet_exp.distributed import DistContext, resolve_device
    from densenet_exp.engine import epoch as ep
    from densenet_exp.engine.build import build
    from densenet_exp.engine.helpers import loss_fn, model_input

    typed = to_typed(cfg)
    device = resolve_device(str(cfg.trainer.device))
    c = build(typed, DistContext(device=device))
    batch = next(c.train.epoch(0))
    x, y, tr = model_input(batch.x, c.precision, c.channels_last), batch.y, typed.trainer
    c.model.train()

    def step() -> None:  # what train_one_epoch does per step, without the data
        with c.precision.autocast():
            loss = loss_fn(c.model(x), y, tr.loss, tr.label_smoothing, tr.focal_gamma)
        c.precision.backward(loss)
        ep._optimizer_step(c, tr.grad_clip)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(y) / (time.perf_counter() - t)


def end_to_end_rate(cfg, run_dir: Path) -> float:
    from densenet_exp import train

    return float(train(cfg, run_dir)["img_per_s"])


def bench(
    name: str, overrides: list[str], model_steps: int, rounds: int, out: Path, variants: dict
) -> list[dict]:
    rows = []
    for variant, extra in variants.items():
        cfg = compose_cfg([*overrides, *extra])
        # set up twice: the second run of a disk cache finds the file the first one wrote
        (_, first), (loader, again) = loader_rate(cfg), loader_rate(cfg)
        # the machine's speed drifts by 10-30% over minutes: the model alone before and after
        # each real run, each run's ratio to the mean of the two, and the median over the rounds
        models = [model_rate(cfg, model_steps)]
        e2es = []
        for r in range(rounds):
            e2es.append(end_to_end_rate(cfg, out / f"run{len(rows)}-{r}-{abs(hash(name))}"))
            models.append(model_rate(cfg, model_steps))
        ratios = [e / ((m0 + m1) / 2) for e, m0, m1 in zip(e2es, models, models[1:])]
        row = dict(
            data=name,
            variant=variant,
            setup_s=[first, again],
            loader=loader,
            model=models,
            e2e=e2es,
            ratios=ratios,
            ratio=statistics.median(ratios),
        )
        rows.append(row)
        print(
            f"| {name} | {variant} | {first:.1f} / {again:.1f} | {loader:.0f} | "
            f"{' / '.join(f'{m:.1f}' for m in models)} | {' / '.join(f'{e:.1f}' for e in e2es)} | "
            f"{' / '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f}x |",
            flush=True,
        )
    return rows


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln]
    model = names[0] if names else ""
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
    return f"{model}; flags: {' '.join(flags) or 'none of avx2/avx512'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=15, help="default job: epochs (make run: 15)")
    p.add_argument("--jpeg", action="store_true", help="also a JPEG folder at 224 px")
    p.add_argument("--jpeg-model", default="densenet121")
    p.add_argument("--jpeg-images", type=int, default=320, help="train images (val: a quarter)")
    p.add_argument("--steps", type=int, default=8, help="JPEG folder: steps (real run, model)")
    p.add_argument("--batch", type=int, default=16, help="JPEG folder: batch size")
    p.add_argument("--amp", default="O0")
    p.add_argument("--model-steps", type=int, default=150, help="default job: model-alone steps")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="real runs per variant, model between")
    p.add_argument("--skip-default", action="store_true", help="only the JPEG folder")
    p.add_argument("--only", nargs="+", default=None, help="variants whose name has one of these")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    common = [
        f"trainer.device={args.device}",
        f"amp={args.amp}",
        "trainer.progress=false",
        f"trainer.channels_last={str(args.channels_last).lower()}",
    ]
    print(f"# torch {torch.__version__} on {args.device} ({torch.get_num_threads()} threads) | ")
    print(f"# CPU: {cpu_flags()} | {' '.join(sys.argv[1:])}")
    print(
        "| data | pipeline | set-up s (first / again) | loader img/s "
        "| model img/s (between the runs) "
        "| end-to-end img/s (each run) | e2e / model (each run) | median |"
    )
    print("|---|---|---|---|---|---|---|---|")
    variants = {**VARIANTS, **(GPU_VARIANTS if args.device.startswith("cuda") else {})}
    if args.only:
        variants = {k: v for k, v in variants.items() if any(o in k for o in args.only)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        digits = [*common, f"trainer.epochs={args.epochs}", f"data.root={out / 'digits'}"]
        if not args.skip_default:
            rows += bench(
                "digits (default job)", digits, args.model_steps, args.rounds, out, variants
            )
        if args.jpeg:
            folder = write_jpeg_folder(out / "jpeg", args.jpeg_images, args.jpeg_images // 4)
            jpeg = [
                *common,
                "data=imagefolder",
                f"data.root={folder}",
                f"data.batch_size={args.batch}",
                f"model={args.jpeg_model}",
                f"trainer.max_steps={args.steps}",
                "trainer.epochs=1000",
                "trainer.eval_every=1000",
            ]
            name = f"JPEG folder, {args.jpeg_model} 224 px"
            rows += bench(name, jpeg, args.steps, args.rounds, out, variants)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
