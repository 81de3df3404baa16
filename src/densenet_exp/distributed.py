"""Starting ranks, process groups, reductions and rank-0 helpers.

One Hydra process per job owns the output directory. It either runs the job in-process (one rank,
or one rank of an external ``torchrun``) or starts ``dist.nproc_per_node`` ranks with torch's
elastic launcher (c10d rendezvous, no restarts) and returns rank 0's result.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .config import DeviceName, DistBackend, DistConfig, node
from .process import threads_for_launched_ranks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    if name == DeviceName.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == DeviceName.cuda and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA GPU is visible; use auto or cpu")
    if name not in (DeviceName.cpu, DeviceName.cuda):
        raise ValueError(f"unknown trainer.device {name!r}; valid choices: {DeviceName.valid()}")
    return torch.device(name)


def nproc_per_node(dist_cfg: DistConfig | Any, device: torch.device) -> int:
    """``auto``: one rank per visible GPU on CUDA, one rank on CPU."""
    n = node(DistConfig, dist_cfg).nproc
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if n is None:
        return max(1, gpus)
    if device.type == "cuda" and n > gpus:
        raise ValueError(
            f"dist.nproc_per_node={n} but only {gpus} GPU(s) are visible: one rank per GPU "
            "(use trainer.device=cpu for more CPU ranks)"
        )
    return n


def under_external_launcher() -> bool:
    """True inside torchrun/SLURM-style launches that already set the rank variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def backend_for(device: torch.device, requested: str) -> str:
    if requested == DistBackend.auto:
        return DistBackend.nccl.value if device.type == "cuda" else DistBackend.gloo.value
    if requested == DistBackend.nccl and device.type != "cuda":
        raise ValueError("dist.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    return requested


def setup(dist_cfg: DistConfig, device_name: str) -> DistContext:
    """Join the process group from the environment (set by torchrun or our launcher)."""
    device = resolve_device(device_name)
    if not under_external_launcher() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = backend_for(device, dist_cfg.backend)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=dist_cfg.timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(rank, local_rank, world, local_world, device, backend)


def cleanup() -> None:
    """Leave the process group on success, all ranks together."""
    if dist.is_initialized():
        # Rank 0 is often still writing its last files when the others get here; a gloo rank
        # that tears its pairs down while a peer is still connected can abort in C++
        # ("terminate called without an active exception", seen once in CI). After the
        # barrier every rank has finished its work and shuts down at the same moment.
        dist.barrier()
        dist.destroy_process_group()


def from_rank_0(obj: Any) -> Any:
    """Global rank 0's ``obj`` on every rank: what each node of a job returns, so the node that
    does not hold rank 0 (torch's rendezvous orders nodes its own way) returns the same."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def average_buffers(model: torch.nn.Module) -> None:
    """Average BN running stats across ranks (timm's ``distribute_bn``) so rank 0's are global."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for name, buf in model.named_buffers():
        if ("running_mean" in name or "running_var" in name) and buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list (``gpu[01-03,7],cpu5``) as host names, in order."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist):
        prefix, ranges = m.group(1), m.group(2)
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    return hosts


def rendezvous(dist_cfg: DistConfig | Any) -> tuple[str, str]:
    """``(endpoint, run id)``; ``slurm`` or ``slurm:PORT`` means the job's first node and job id.

    Without a port, the port comes from the job id (20000-29999, below Linux's ephemeral range):
    jobs of an array often share a first node, and on one fixed port a second job would find the
    first one's rendezvous store there."""
    dist_cfg = node(DistConfig, dist_cfg, "dist")
    endpoint, run_id = dist_cfg.rdzv_endpoint, dist_cfg.rdzv_id
    if endpoint.split(":")[0] != "slurm":
        return endpoint, run_id
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("dist.rdzv_endpoint=slurm outside a SLURM job (no SLURM_JOB_NODELIST)")
    job = os.environ.get("SLURM_JOB_ID", run_id)
    digits = re.sub(r"\D", "", job)
    port = endpoint.split(":")[1] if ":" in endpoint else str(20000 + int(digits or 0) % 10000)
    return f"{expand_nodelist(nodelist)[0]}:{port}", f"{run_id}-{job}"


def launch(
    entry: Callable[..., Any],
    args: tuple[Any, ...],
    dist_cfg: DistConfig | Any,
    nproc: int,
    device: torch.device,
) -> Any:
    """Run ``entry(*args)`` on ``nproc`` local ranks (and ``dist.nnodes`` machines).

    Uses ``torch.distributed.launcher.api`` (the library behind torchrun) with c10d rendezvous and
    no restarts, and returns the local rank 0 return value. A failing rank fails the launch with
    that rank's error (``ChildFailedError``).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    dist_cfg = node(DistConfig, dist_cfg, "dist")
    nnodes = dist_cfg.nnodes
    endpoint, run_id = rendezvous(dist_cfg)
    if nnodes > 1 and endpoint.endswith(":0"):
        raise ValueError(
            f"dist.nnodes={nnodes} needs dist.rdzv_endpoint=HOST:PORT reachable from every node "
            f"(got {endpoint!r})"
        )
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend="c10d",  # LaunchConfig's default is etcd
        rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": dist_cfg.timeout_s},
        max_restarts=0,  # LaunchConfig's default is 3
        monitor_interval=0.2,
        start_method="spawn",
    )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    threads = threads_for_launched_ranks(nproc) if device.type == "cpu" else nullcontext()
    try:
        with threads:
            results = elastic_launch(config, entry)(*args)
    except ChildFailedError as e:
        raise RankFailedError(_describe_failures(e.failures)) from None
    # this node's ranks all hold global rank 0's summary (run_rank broadcasts it)
    return results[min(results)] if results else None


class RankFailedError(RuntimeError):
    """One rank of a multi-process job raised or died; the job stopped."""


# When one rank dies, the others fail in their next collective with errors like these: they are
# consequences, so the report leads with the rank whose error is not one of them.
_KNOCK_ON = (
    "Connection reset",
    "Connection closed",
    "Broken pipe",
    "DistBackendError",
    "ProcessGroup",
    "NCCL",
    "gloo",
    "timed out",
    "Timeout",
    # the disk cache's waiting ranks when rank 0 could not write it (data/diskcache.py): under
    # load they can stop before rank 0 has recorded its own error, which is the one to lead
    "rank 0 failed to write it",
)


def _describe_failures(failures: dict[int, Any]) -> str:
    def first_line(failure: Any) -> str:
        if failure.exitcode is not None and failure.exitcode < 0:
            return f"killed by signal {-failure.exitcode} ({failure.signal_name()})"
        message = failure.message
        recorded = isinstance(message, dict)
        if recorded:  # the error file's record of the exception, "Type: message"
            message = message.get("message", message)
        lines = str(message).strip().splitlines()
        if not lines:
            return f"exit code {failure.exitcode}"
        # a record's first line says what went wrong (later ones can be advice, as
        # torch.compile's "Set TORCHDYNAMO_VERBOSE=1 ..."); without an error file the text is
        # the end of a traceback, whose last line is the exception
        return lines[0] if recorded else lines[-1]

    described = [(rank, first_line(f), f) for rank, f in failures.items()]
    described.sort(key=lambda d: (any(k in d[1] for k in _KNOCK_ON), d[2].timestamp, d[0]))
    for rank, line, failure in described:
        log.error("rank %d failed (exit code %s): %s", rank, failure.exitcode, line)
    rank, line, _ = described[0]
    others = "".join(f"; then rank {r}: {text}" for r, text, _ in described[1:])
    return f"rank {rank} failed: {line}{others}"
