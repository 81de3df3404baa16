#!/usr/bin/env python
"""Training-step throughput and peak memory: densenet_exp's DenseNet against torchvision's.

Times the full step (forward, loss, backward, optimizer step) on synthetic data after warm-up, for
our model and torchvision's with the same batch, size, precision (our O0-O3 policy applied to both)
and memory format. Every configuration runs in its own process (peak RSS on CPU is per process),
and the implementations alternate so drift in machine load hits both alike.

    python benchmarks/bench_train.py --model densenet121 --image-size 128 --batch 32
    python benchmarks/bench_train.py --amp O0 O1 O2 --channels-last --device cuda --batch 64 256
    python benchmarks/bench_train.py --scaling            # memory/time vs depth, with/without ME

Peak memory: CUDA ``max_memory_allocated``; CPU the peak RSS. "act" is the peak minus the memory
held between steps (weights, optimizer state): the activations and gradients of one step.

On CPU, RSS also counts what glibc's allocator keeps after tensors are freed (its heap only shrinks
from the top), which varies by +-50 MB between identical runs and grows with fragmentation. The
"live" columns are the CPU counterpart of CUDA's ``max_memory_allocated``: the peak of the bytes
malloc has handed out and not had back (``mallinfo2``), sampled after every operator of one
warm-up step, minus the same count before that step.

Low precision on a CPU without bf16 instructions (AVX2 only) is emulated and ~15x slower than
fp32; there the O1-O3 rows default to 1 warm-up and 2 timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("ours", "torchvision")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_bytes_sampler():
    """A dispatch mode recording the peak of glibc's in-use bytes after every operator."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + mmapped chunks

    class Sampler(TorchDispatchMode):
        def __enter__(self):
            self.base = self.peak = in_use()
            return super().__enter__()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    return Sampler


def worker(spec: dict) -> dict:
    import resource

    import torch
    import torchvision

    sys.path.insert(0, str(ROOT / "src"))
    from densenet_exp import models
    from densenet_exp.precision import Precision

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    name, me = spec["model"], spec["memory_efficient"]
    if spec["impl"] == "torchvision":
        model = getattr(torchvision.models, name)(memory_efficient=me, num_classes=1000)
    elif name == "densenet_bc_digits":  # the default model of `make run`
        model = models.DenseNet(
            12, (3, 3, 3), 24, num_classes=10, stem="cifar", memory_efficient=me
        )
    elif name.startswith("densenet_bc"):
        depth = int(name.removeprefix("densenet_bc"))
        model = models.densenet_bc(depth, num_classes=10, memory_efficient=me)
    else:
        model = getattr(models, name)(memory_efficient=me, num_classes=1000)
    model.to(device)
    if spec["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = {
        "opt_level": spec["amp"],
        "dtype": "auto",
        "keep_batchnorm_fp32": None,
        "master_weights": None,
        "loss_scale": None,
        "backend": "native",
    }
    policy = Precision(amp, device)
    policy.prepare(model, opt)
    train_model = torch.compile(model) if spec["compile"] else model
    n_cls = model.classifier.out_features
    x = torch.randn(spec["batch"], 3, spec["image_size"], spec["image_size"], device=device)
    x = policy.cast_input(x)
    if spec["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_cls, (spec["batch"],), device=device)

    def step() -> None:
        with policy.autocast():
            loss = torch.nn.functional.cross_entropy(train_model(x).float(), y)
        policy.backward(loss)
        policy.step(opt)
        policy.zero_grad(opt, model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = _rss_mb()
    sampler = _live_bytes_sampler() if device.type == "cpu" else None
    live = None
    for i in range(spec["warmup"]):
        if sampler is not None and i == spec["warmup"] - 1:
            with sampler() as s:  # the last warm-up step, never a timed one
                step()
            live = (s.peak - s.base) / 2**20
        else:
            step()
    sync()
    if device.type == "cuda":
        steady = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        act = peak - steady
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        act = peak - base_rss
    result = {"img_per_s": spec["batch"] / statistics.median(times), "peak_mb": peak, "act_mb": act}
    if live is not None:
        result["live_mb"] = live
    return result


def run_one(spec: dict) -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(r: dict, key: str, digits: int = 0) -> str:
    if "error" in r:
        return r["error"][:60] or "-"
    return f"{r[key]:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="densenet121")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[32])
    p.add_argument("--amp", nargs="+", default=["O0", "O1"], choices=["O0", "O1", "O2", "O3"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--memory-efficient", choices=["both", "on", "off"], default="both")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, help="timed steps (default 8; 2 for emulated bf16)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3; 1 for emulated)")
    p.add_argument(
        "--repeats",
        type=int,
        help="alternating rounds, medians reported (default 2; 1 for emulated bf16)",
    )
    p.add_argument("--scaling", action="store_true", help="memory and time vs depth (DenseNet-BC)")
    p.add_argument("--no-torchvision", action="store_true", help="time our model only")
    p.add_argument("--json", type=Path, help="also write all results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    print(
        f"# torch {torch.__version__} on {device}"
        f" ({torch.cuda.get_device_name() if device == 'cuda' else os.cpu_count()} "
        f"{'' if device == 'cuda' else 'CPU cores'}) | {' '.join(sys.argv[1:])}"
    )
    if args.scaling:
        return scaling(args, device)
    me_modes = {"both": [False, True], "on": [True], "off": [False]}[args.memory_efficient]
    results = []
    live = device == "cpu"
    header = (
        "| batch | amp | memory_efficient | ours img/s | tv img/s | speed ours/tv | ours act MB "
        "| tv act MB | act ours/tv | ours act / tv default act |"
    )
    if live:
        header += " ours live MB | tv live MB | live ours/tv | ours live / tv default live |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for batch in args.batch:
        for level in args.amp:
            emulated = device == "cpu" and level != "O0" and not _native_bf16()
            steps = args.steps or (2 if emulated else 8)
            warmup = args.warmup or (1 if emulated else 3)
            repeats = args.repeats or (1 if emulated else 2)
            row: dict = {}
            for me in me_modes:
                impls = IMPLS[:1] if args.no_torchvision else IMPLS
                runs: dict = {impl: [] for impl in impls}
                for _ in range(repeats):
                    for impl in impls:
                        spec = dict(
                            model=args.model,
                            impl=impl,
                            memory_efficient=me,
                            batch=batch,
                            image_size=args.image_size,
                            amp=level,
                            channels_last=args.channels_last,
                            compile=args.compile,
                            device=device,
                            steps=steps,
                            warmup=warmup,
                        )
                        runs[impl].append(run_one(spec))
                med = {impl: _median(rs) for impl, rs in runs.items()}
                med.setdefault("torchvision", {"error": "not run"})
                row[me] = med
                o, t = med["ours"], med["torchvision"]
                tv_default = row.get(False, {}).get("torchvision", {"error": ""})

                def ratio(a: dict, b: dict, key: str, suffix: str = "") -> str:
                    if "error" in a or "error" in b:
                        return "-"
                    return f"{a[key] / b[key]:.2f}{suffix}"

                cells = [
                    batch,
                    level,
                    me,
                    fmt(o, "img_per_s", 1),
                    fmt(t, "img_per_s", 1),
                    ratio(o, t, "img_per_s", "x"),
                    fmt(o, "act_mb"),
                    fmt(t, "act_mb"),
                    ratio(o, t, "act_mb"),
                    ratio(o, tv_default, "act_mb"),
                ]
                if live:
                    cells += [
                        fmt(o, "live_mb"),
                        fmt(t, "live_mb"),
                        ratio(o, t, "live_mb"),
                        ratio(o, tv_default, "live_mb"),
                    ]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
                results.append(
                    {
                        "batch": batch,
                        "amp": level,
                        "memory_efficient": me,
                        **{f"{impl}_{k}": v for impl in IMPLS for k, v in med[impl].items()},
                    }
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX) rather than emulating it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: assume a modern CPU, use the full step counts
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _median(rs: list[dict]) -> dict:
    good = [r for r in rs if "error" not in r]
    if not good:
        return rs[0]
    return {k: statistics.median(r[k] for r in good) for k in good[0]}


def scaling(args: argparse.Namespace, device: str) -> None:
    live = device == "cpu"
    header = "| model | memory_efficient | img/s | act MB | act MB per layer |"
    if live:
        header += " live MB | live MB per layer |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for depth in (40, 100, 190):
        for me in (False, True):
            spec = dict(
                model=f"densenet_bc{depth}",
                impl="ours",
                memory_efficient=me,
                batch=args.batch[0],
                image_size=args.image_size,
                amp=args.amp[0],
                channels_last=args.channels_last,
                compile=False,
                device=device,
                steps=args.steps or 4,
                warmup=args.warmup or 2,
            )
            r = run_one(spec)
            cells = [f"DenseNet-BC L={depth}", me, fmt(r, "img_per_s", 1), fmt(r, "act_mb")]
            keys = ["act_mb", "live_mb"] if live else ["act_mb"]
            for i, key in enumerate(keys):
                if i:
                    cells.append(fmt(r, key))
                per_layer = r[key] / (depth - 4) if "error" not in r else float("nan")
                cells.append(f"{per_layer:.2f}")
            print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
