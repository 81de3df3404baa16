"""Slots: which GPUs and which cores each concurrently running job gets. Pure planning, no
processes, so that it is tested on any machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    index: int
    gpus: tuple[str, ...]  # as CUDA_VISIBLE_DEVICES takes them; () on a machine without GPUs
    cores: tuple[int, ...]


def usable_cores() -> list[int]:
    """The cores this process may run on (taskset, cgroup cpusets), as the jobs will see them."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS: every core
        return list(range(os.cpu_count() or 1))


def machine_gpus() -> list[str]:
    """The machine's GPUs without initialising CUDA in this process (a child forked or spawned
    after that could not use them): CUDA_VISIBLE_DEVICES where set, else nvidia-smi's list in
    PCI bus order (the order the jobs get with CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"hydra.launcher.{name}={value}: must be a whole number of 1 or more")


def plan(
    cores: list[int],
    gpus: list[str],
    gpus_per_job: int = 1,
    jobs_per_gpu: int = 1,
    cores_per_job: int | None = None,
    max_parallel: int | None = None,
) -> list[Slot]:
    """The slots: on a GPU machine one per group of ``gpus_per_job`` GPUs (``jobs_per_gpu`` per
    GPU when packing), the cores shared out between them; without GPUs as many as there are
    blocks of ``cores_per_job`` cores (1 by default). Jobs never share a core."""
    for name, value in (
        ("gpus_per_job", gpus_per_job),
        ("jobs_per_gpu", jobs_per_gpu),
        ("cores_per_job", cores_per_job),
        ("max_parallel", max_parallel),
    ):
        _positive(name, value)
    if jobs_per_gpu > 1 and gpus_per_job > 1:
        raise ValueError(
            f"hydra.launcher.jobs_per_gpu={jobs_per_gpu} packs jobs of one GPU; "
            f"gpus_per_job={gpus_per_job} gives each job several: choose one"
        )
    if gpus:
        if gpus_per_job > len(gpus):
            raise ValueError(
                f"hydra.launcher.gpus_per_job={gpus_per_job}, but {len(gpus)} GPU(s) to use: "
                + ",".join(gpus)
            )
        groups = [tuple(gpus[i : i + gpus_per_job]) for i in range(0, len(gpus), gpus_per_job)]
        groups = [g for g in groups if len(g) == gpus_per_job]
        # spread first: job k of a round goes to the k-th GPU, the next round packs
        devices = [g for _ in range(jobs_per_gpu) for g in groups]
        count = min(len(devices), max_parallel or len(devices))
        per = cores_per_job or max(1, len(cores) // count)
    else:
        per = cores_per_job or 1
        count = min(max(1, len(cores) // per), max_parallel or len(cores))
        devices = [()] * count
    if per * count > len(cores):
        if cores_per_job is not None:
            raise ValueError(
                f"hydra.launcher.cores_per_job={cores_per_job} x {count} job(s) at once needs "
                f"{per * count} cores; this process may use {len(cores)}: "
                + ",".join(map(str, cores))
            )
        count = max(1, len(cores) // per)  # fewer cores than GPU slots: fewer slots
    return [Slot(k, devices[k], tuple(cores[k * per : (k + 1) * per])) for k in range(count)]
