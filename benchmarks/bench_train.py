#!/usr/bin/env python
"""Training-step throughput and peak memory: densenet_exp's DenseNet against torchvision's.

Times the full step (forward, loss, backward, optimizer step) on synthetic data after warm-up, for
our model and torchvision's with the same batch, size, precision (our O0-O3 policy applied to both)
and memory format.

- Speed: one process per (batch, amp level) holds every model of the comparison (ours and
  torchvision's, memory_efficient off and on) and alternates single steps between them, rotating
  the order each round; img/s are medians, ratios the median of the per-round ratios.
  Alternating step by step keeps the ratios honest on a machine whose speed drifts by 10-20% from
  minute to minute (a shared VM), where timing each model in its own process minutes apart does
  not.
- Memory: every configuration in its own process, so that each peak is its own.

    python benchmarks/bench_train.py --model densenet121 --image-size 128 --batch 32
    python benchmarks/bench_train.py --amp O0 O1 O2 --channels-last --device cuda --batch 64 256
    python benchmarks/bench_train.py --scaling            # memory/time vs depth, with/without ME
    python benchmarks/bench_train.py --model densenet_bc_digits --image-size 16 --batch 64

For ``densenet_bc_digits`` (``make run``'s model), which torchvision does not have, "tv" is our
plain network (``model.impl=plain``): torchvision-shaped, the same layers.

Peak memory: CUDA ``max_memory_allocated``; CPU the peak RSS. "act" is the peak minus the memory
held between steps (weights, optimizer state): the activations and gradients of one step. On CPU
that is the peak RSS above the RSS after setup, less the optimizer state the first step creates.

On CPU, RSS also counts what glibc's allocator keeps after tensors are freed (its heap only shrinks
from the top), which varies by +-50 MB between identical runs and grows with fragmentation; our
memory-efficient mode hands those pages back within a time budget (``heap.py``;
``--no-heap-trim`` turns that off for an A/B). In the speed process, whose heap all models share,
the trims' time budget counts our memory-efficient model's steps only, as if it ran alone. The
"live" columns are the CPU counterpart of CUDA's ``max_memory_allocated``: the peak of the bytes
malloc has handed out and not had back (``mallinfo2``) in one more step after the timed ones,
sampled after every operator and by a thread polling every 0.2 ms (which catches most scratch
buffers that live inside one operator, as CUDA's peak counts cuDNN's workspace), minus the same
count before that step.

Low precision on a CPU without bf16 instructions (AVX2 only) is emulated and ~15x slower than
fp32; there the O1-O3 rows default to 1 warm-up step and 2 timed rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("ours", "torchvision")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_bytes_sampler():
    """A dispatch mode recording the peak of glibc's in-use bytes after every operator."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from densenet_exp import heap

    if not heap.available():  # not glibc >= 2.33
        return None
    in_use = heap.in_use_bytes

    class Sampler(TorchDispatchMode):
        """Samples after every operator, and from a thread polling meanwhile: that one also
        catches the scratch an operator allocates and frees inside itself (oneDNN's reorder
        buffers in a convolution's backward), as CUDA's peak counts cuDNN's workspace."""

        def __enter__(self):
            self.base = self.peak = in_use()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
            return super().__enter__()

        def __exit__(self, *exc):
            self._stop.set()
            self._thread.join()
            return super().__exit__(*exc)

        def _poll(self) -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, in_use())
                time.sleep(0.0002)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use())
            return out

    return Sampler


def _build(spec: dict, impl: str, me: bool):
    """One training step for ``impl`` with ``spec``'s settings, and its optimizer."""
    import torch
    import torchvision

    sys.path.insert(0, str(ROOT / "src"))
    from densenet_exp import models
    from densenet_exp.precision import Precision
    from densenet_exp.process import configure_compiler, heap_trimmer

    device = torch.device(spec["device"])
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    name = spec["model"]
    if name == "densenet_bc_digits":  # the default model of `make run`
        # torchvision has no such network: its counterpart is our plain, torchvision-shaped one
        cls = models.DenseNet if impl == "torchvision" else models.FastDenseNet
        model = cls(12, (3, 3, 3), 24, num_classes=10, stem="cifar", memory_efficient=me)
    elif impl == "torchvision":
        model = getattr(torchvision.models, name)(memory_efficient=me, num_classes=1000)
    elif name.startswith("densenet_bc"):
        depth = int(name.removeprefix("densenet_bc"))
        model = models.densenet_bc(depth, num_classes=10, memory_efficient=me)
    else:
        model = getattr(models, name)(memory_efficient=me, num_classes=1000)
    model.to(device)
    if spec["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if spec.get("heap_trim", True) and impl == "ours":  # as the engine does (trainer.heap_trim)
        model.set_memory_hook(heap_trimmer(device))
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
    # both models through the trainer's compile (its dynamo setting only matters to ours)
    if spec["compile"]:
        configure_compiler()  # as a rank's start-up does with trainer.compile=true
    train_model = models.compile_model(model) if spec["compile"] else model
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
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, opt


def speed_worker(spec: dict) -> dict:
    """img/s of every (impl, memory_efficient) in spec["variants"], alternating single steps."""
    variants = [tuple(v) for v in spec["variants"]]
    steps = {v: _build(spec, *v)[0] for v in variants}
    import torch

    from densenet_exp.process import heap_trimmer

    trimmer = heap_trimmer(torch.device(spec["device"]))
    for _ in range(spec["warmup"]):
        for v in variants:
            steps[v]()
    times: dict = {v: [] for v in variants}
    for r in range(spec["steps"]):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:  # rotate who goes first
            t = time.perf_counter()
            steps[v]()
            dt = time.perf_counter() - t
            times[v].append(dt)
            if v != ("ours", True) and trimmer is not None:
                # the heap trims' time budget runs on our memory-efficient model's time alone,
                # as in a process of its own, not on the other models' steps as well
                trimmer.not_before += dt
    return {
        f"{impl}/{me}": {"img_per_s": spec["batch"] / statistics.median(ts), "step_s": ts}
        for (impl, me), ts in times.items()
    }


def memory_worker(spec: dict) -> dict:
    """Peak memory of one (impl, memory_efficient) configuration, alone in this process."""
    import resource

    import torch

    device = torch.device(spec["device"])
    step, opt = _build(spec, spec["impl"], spec["memory_efficient"])
    base_rss = _rss_mb()
    result: dict = {}
    for _ in range(spec["warmup"]):
        step()
    if device.type == "cuda":
        steady = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["steps"]):
        step()
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["act_mb"] = result["peak_mb"] - steady
        return result
    # what CUDA's "steady" holds and the post-setup RSS does not: the optimizer's state, created
    # by the first step and kept between steps (gradients are freed after each step)
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["act_mb"] = result["peak_mb"] - base_rss - state / 2**20
    from densenet_exp.process import heap_trimmer

    trimmer = heap_trimmer(torch.device(spec["device"]))
    result["heap_trims"] = trimmer.trims if trimmer is not None else 0
    # live bytes in one more step, after the RSS peak is read: the sampler's polling thread holds
    # glibc's arena lock at times, which sends the step's allocations to a second arena
    sampler = _live_bytes_sampler()
    if sampler is not None:
        with sampler() as s:
            step()
        result["live_mb"] = (s.peak - s.base) / 2**20
    return result


def run_one(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3600,
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
    p.add_argument(
        "--no-heap-trim",
        action="store_true",
        help="CPU: never trim the heap in memory-efficient mode (heap.py), for an A/B",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--steps", type=int, help="timed rounds, one step per model each (default 12; 2 emulated)"
    )
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3; 1 for emulated)")
    p.add_argument("--scaling", action="store_true", help="memory and time vs depth (DenseNet-BC)")
    p.add_argument("--no-torchvision", action="store_true", help="time our model only")
    p.add_argument("--json", type=Path, help="also write all results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        work = speed_worker if spec["kind"] == "speed" else memory_worker
        print(json.dumps(work(spec)))
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
    impls = IMPLS[:1] if args.no_torchvision else IMPLS
    live = device == "cpu"
    header = (
        "| batch | amp | memory_efficient | ours img/s | tv img/s | speed ours/tv "
        "| speed ours / tv default | ours act MB | tv act MB | act ours/tv "
        "| ours act / tv default act |"
    )
    if live:
        header += " ours live MB | tv live MB | live ours/tv | ours live / tv default live |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    results = []
    for batch in args.batch:
        for level in args.amp:
            emulated = device == "cpu" and level != "O0" and not _native_bf16()
            base = dict(
                model=args.model,
                batch=batch,
                image_size=args.image_size,
                amp=level,
                channels_last=args.channels_last,
                compile=args.compile,
                heap_trim=not args.no_heap_trim,
                device=device,
                warmup=args.warmup or (1 if emulated else 3),
            )
            # torchvision's default mode is every row's reference, so it always runs
            variants = [(i, me) for me in me_modes for i in impls]
            if not args.no_torchvision and ("torchvision", False) not in variants:
                variants.append(("torchvision", False))
            speed = run_one(
                dict(
                    base,
                    kind="speed",
                    variants=variants,
                    steps=args.steps or (2 if emulated else 12),
                )
            )
            mem = {
                v: run_one(
                    dict(
                        base,
                        kind="memory",
                        impl=v[0],
                        memory_efficient=v[1],
                        steps=1 if emulated else 2,
                    )
                )
                for v in variants
            }

            tv_default = _merge(speed, mem, "torchvision", False)
            for me in me_modes:
                o, t = _merge(speed, mem, "ours", me), _merge(speed, mem, "torchvision", me)
                cells = [
                    batch,
                    level,
                    me,
                    fmt(o, "img_per_s", 1),
                    fmt(t, "img_per_s", 1),
                    ratio(o, t, "img_per_s", "x"),
                    ratio(o, tv_default, "img_per_s", "x"),
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
                    {"batch": batch, "amp": level, "memory_efficient": me, "ours": o, "tv": t}
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _merge(speed: dict, mem: dict, impl: str, me: bool) -> dict:
    """One configuration's speed and memory results, or why there are none."""
    if (impl, me) not in mem:
        return {"error": "not run"}
    r = speed if "error" in speed else speed[f"{impl}/{me}"]
    return {**mem[(impl, me)], **r} if "error" not in r else dict(r)


def ratio(a: dict, b: dict, key: str, suffix: str = "") -> str:
    if key not in a or key not in b:
        return "-"
    if key == "img_per_s" and "step_s" in a and "step_s" in b:
        # median of the per-round ratios: the two steps of a round ran seconds apart, so a
        # drift of the machine's speed over the run cancels in each ratio
        value = statistics.median(tb / ta for ta, tb in zip(a["step_s"], b["step_s"]))
    else:
        value = a[key] / b[key]
    return f"{value:.2f}{suffix}"


def _native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX) rather than emulating it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: assume a modern CPU, use the full step counts
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
                variants=[("ours", me)],
                batch=args.batch[0],
                image_size=args.image_size,
                amp=args.amp[0],
                channels_last=args.channels_last,
                compile=False,
                heap_trim=not args.no_heap_trim,
                device=device,
                steps=args.steps or 4,
                warmup=args.warmup or 2,
            )
            r = run_one(dict(spec, kind="memory"))
            speed = run_one(dict(spec, kind="speed"))
            r.update(speed.get(f"ours/{me}", speed))
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
