"""Functions run in spawned ranks by test_distributed.py (importable by name, as spawn needs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from densenet_exp.distributed import cleanup
from densenet_exp.models.fast import DenseNet  # what trains by default
from densenet_exp.models.sync_batchnorm import SyncBatchNorm


def init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )


def syncbn_check(rank: int, world: int, out: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    bn = SyncBatchNorm(5).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    half = slice(rank * 4, rank * 4 + 4)
    xr = x[half].clone().requires_grad_(True)
    y = bn(xr)
    (y * g[half]).sum().backward()
    dist.all_reduce(bn.weight.grad)
    dist.all_reduce(bn.bias.grad)
    torch.save(
        {
            "y": y.detach(),
            "dx": xr.grad,
            "dw": bn.weight.grad,
            "db": bn.bias.grad,
            "rm": bn.running_mean,
            "rv": bn.running_var,
        },
        f"{out}/rank{rank}.pt",
    )


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return DenseNet(4, (2, 2), 8, num_classes=3, stem="cifar", act={"name": "prelu"})


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


def train_steps(model: nn.Module, rank: int, world: int, steps: int = 3) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = 8 // world
    for step in range(steps):
        x, y = batch(step)
        x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def ddp_syncbn_check(rank: int, world: int, out: str) -> None:
    model = SyncBatchNorm.convert(tiny_model())
    ddp = nn.parallel.DistributedDataParallel(model)
    train_steps(ddp, rank, world)
    if rank == 0:
        torch.save(model.state_dict(), f"{out}/ddp.pt")


def eval_check(rank: int, world: int, out: str) -> None:
    from densenet_exp import val_predictions
    from densenet_exp.data import DeviceBatches, Indexed, ShardSampler
    from densenet_exp.data.synthetic import SyntheticDataset
    from densenet_exp.engine import evaluate
    from densenet_exp.precision import Precision

    ds = SyntheticDataset(13, 3, 8, seed=2)
    loader = torch.utils.data.DataLoader(
        Indexed(ds), batch_size=4, sampler=ShardSampler(13, rank, world)
    )
    sink = val_predictions.PredictionSink()
    amp = {
        "opt_level": "O0",
        "dtype": "auto",
        "keep_batchnorm_fp32": None,
        "master_weights": None,
        "loss_scale": None,
        "backend": "native",
    }
    cpu = torch.device("cpu")
    metrics = evaluate(tiny_model(), DeviceBatches(loader, cpu), Precision(amp, cpu), False, sink)
    rows = sink.gather()  # rank 0 gets every rank's rows
    if rank == 0:
        torch.save(metrics, f"{out}/eval.pt")
        path = Path(out) / "val_predictions.csv"
        val_predictions.write(path, rows, val_predictions.image_names(ds), ds.classes)


@record
def failing_rank(cfg: dict, run_dir: str) -> dict:
    """A real rank whose evaluation raises on rank 1 while rank 0 waits in the all-reduce."""
    from densenet_exp import engine
    from densenet_exp.engine import loop

    if os.environ.get("RANK") == "1":

        def broken(*args, **kwargs):
            raise ValueError("injected failure in rank 1")

        loop.evaluate = broken  # what fit's validation calls
    return engine.run_rank(cfg, run_dir)


def ddp_memory_efficient_check(rank: int, world: int, out: str) -> None:
    """The fused memory-efficient path under DDP (PReLU slopes included) equals the plain one."""
    states = {}
    for me in (False, True):
        torch.manual_seed(0)
        model = DenseNet(
            4, (2, 2), 8, num_classes=3, stem="cifar", act={"name": "prelu"}, memory_efficient=me
        )
        train_steps(nn.parallel.DistributedDataParallel(model), rank, world)
        states[me] = model.state_dict()
    if rank == 0:
        torch.save(states, f"{out}/me.pt")


def cleanup_check(rank: int, world: int, out: str) -> None:
    """Rank 0 arrives late at cleanup (as when it writes the last checkpoint); the others must
    not leave the process group before it arrives."""
    if rank == 0:
        time.sleep(0.5)
        torch.save(time.time(), f"{out}/arrived.pt")
        cleanup()
    else:
        cleanup()
        torch.save(time.time(), f"{out}/left{rank}.pt")


def all_checks(rank: int, world: int, port: int, out: str) -> None:
    """Every check above in one process group: one spawn of two ranks (each costs seconds)."""
    init(rank, world, port)
    syncbn_check(rank, world, out)
    ddp_syncbn_check(rank, world, out)
    eval_check(rank, world, out)
    ddp_memory_efficient_check(rank, world, out)
    dist.barrier()
    cleanup_check(rank, world, out)  # last: it leaves the group


def node_main() -> None:
    """One node of a multi-node job (``python -c``): train from argv's overrides, print what
    ``train`` returns on this node."""
    import json
    import sys

    from conftest import compose_cfg

    from densenet_exp import train

    run_dir, *overrides = sys.argv[1:]
    summary = train(compose_cfg(overrides), run_dir)
    print("RESULT " + json.dumps(summary), flush=True)
