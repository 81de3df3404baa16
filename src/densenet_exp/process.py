"""Process-wide settings, made in one place: threads, start methods, compiler flags, the heap.

Each is set once, where a process starts its work: a job (``share_cores_between_jobs``), the ranks
it launches (``threads_for_launched_ranks``), a rank (``configure_rank``), a loader worker
(``loader_worker_init``). Model and data code never change the process they run in; they ask
here what they may use (``cores_per_rank``, ``loader_start_method``), or are handed what may
(``heap_trimmer``, which the engine gives the memory-efficient model).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
from collections.abc import Iterator

import torch

from .heap import HeapTrimmer, available

# Set by the entry point when a launcher runs several jobs side by side on one machine (joblib):
# each job's share of the cores, inherited by the ranks it starts.
JOB_CORES_ENV = "DENSENET_EXP_JOB_CORES"


def job_cores() -> int:
    """The cores this job may use: its share under a parallel launcher, else the process's."""
    shared = os.environ.get(JOB_CORES_ENV)
    if shared:
        return max(1, int(shared))
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / cgroup cpusets, as torch does
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cores_per_rank(local_world_size: int) -> int:
    """The cores of one rank: the job's cores split between the ranks on this machine."""
    return max(1, job_cores() // max(1, local_world_size))


def too_few_cores(nproc: int) -> str | None:
    """What to say when a job starts more CPU ranks than it has cores (they would share them and
    each run slower than one rank would); None when every rank has a core of its own."""
    cores = job_cores()
    if nproc <= cores:
        return None
    return (
        f"{nproc} CPU ranks on {cores} core(s): the ranks share cores and each runs slower; "
        f"lower dist.nproc_per_node, or in a sweep under hydra/launcher=slots give each job "
        f"hydra.launcher.cores_per_job={nproc}"
    )


def share_cores_between_jobs(n_jobs: int) -> None:
    """Several jobs side by side in their own processes (joblib): each gets its share."""
    threads = max(1, job_cores() // n_jobs)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ[JOB_CORES_ENV] = str(threads)  # loader workers and ranks split this share


@contextlib.contextmanager
def threads_for_launched_ranks(nproc: int) -> Iterator[None]:
    """torch's ``LaunchConfig``, unlike torchrun, leaves OMP_NUM_THREADS alone: split the cores.

    The ranks inherit the variable from this process's environment while they start; it is taken
    back afterwards, so a caller of ``train()`` (a notebook, a test) keeps its own threads and
    does not hand one core to every process it starts later.
    """
    if "OMP_NUM_THREADS" in os.environ:  # the user's (or the job's share): theirs to keep
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(cores_per_rank(nproc))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def configure_rank(local_world_size: int, device: torch.device, compile: bool = False) -> None:
    """A rank's process, at its start: its threads, a usable start method, compiler flags."""
    if device.type == "cpu" and local_world_size > 1:
        # ranks on one machine share its cores; torch would otherwise give each all of them
        torch.set_num_threads(cores_per_rank(local_world_size))
    # Under Hydra's joblib launcher the job runs in a loky worker whose start method is "loky", a
    # name that does not exist in the children DataLoader starts: they die in multiprocessing's
    # ``prepare()`` ("DataLoader worker exited unexpectedly", hydra#964). Reset it to spawn.
    if mp.get_start_method(allow_none=True) == "loky":
        mp.set_start_method("spawn", force=True)
    if loader_start_method() == "forkserver":
        # Loader workers fork from one server process; with torch and the data package imported
        # there once, a worker starts in milliseconds instead of importing them again (seconds
        # each, for every worker of every loader). The server only imports: no threads to fork.
        mp.set_forkserver_preload(["torch", "densenet_exp.data"])
    if compile:
        configure_compiler()


def configure_compiler() -> None:
    """Let dynamo trace the ``torch.autograd.grad`` the memory-efficient layers' backward uses.

    Their backward for activations without a hand-written derivative (PReLU, Swish, GELU, Mish)
    calls ``torch.autograd.grad``. Dynamo traces an autograd.Function's backward along with its
    forward and by default breaks the graph at that call; a break inside the dense block's loop
    sends the whole frame to eager, and every dense layer then recompiles for its own number of
    inputs until the cache limit leaves the rest eager too. ``trace_autograd_ops`` lets dynamo
    trace the call (torch 2.14: no breaks, same gradients). It is process-wide, and only widens
    what dynamo traces. Older torch without the flag: compiled with the breaks, as before.
    """
    config = torch._dynamo.config
    if hasattr(config, "trace_autograd_ops"):
        config.trace_autograd_ops = True


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader worker's process: one thread (the rank's intra-op threads do the compute)."""
    torch.set_num_threads(1)


def loader_start_method() -> str:
    """forkserver where available: forking a process that already runs torch's threads can hang."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def heap_trimmer(device: torch.device) -> HeapTrimmer | None:
    """This process's CPU heap trimmer (``heap.py``), or None where there is nothing to trim.

    One per process: it measures the process's own floor and spaces its trims in time.
    """
    if device.type != "cpu" or not available():
        return None
    return _process_trimmer()


@functools.cache
def _process_trimmer() -> HeapTrimmer:
    return HeapTrimmer()
