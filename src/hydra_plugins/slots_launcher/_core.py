"""The slots launcher's queue: start a job on every free slot, refill a slot the moment its job
ends (never in batches that wait for their slowest job), and return the results in job order.

Each slot has a worker process (``_child``) that runs the slot's jobs one after another, started
with the slot's ``CUDA_VISIBLE_DEVICES`` (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, the order
nvidia-smi shows), ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` and core affinity; this process
never initialises CUDA. What ran where goes to ``<sweep>/slots.jsonl``, one line per job; a job
that dies by a signal is a failed result naming it (and its slot gets a new worker). SIGINT or
SIGTERM stops every job (SIGTERM, SIGKILL after a grace period) and ends the sweep, and the kernel
sends SIGTERM to the workers of a sweep that died; each job then resumes from its last checkpoint
when the same command runs again with the app's resume option.

Written here rather than on joblib or submitit: joblib's workers take one environment for all
(no per-job devices or cores), and submitit's local executor gives every job the same devices
(Hydra #2757).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals

from ._child import PLUGIN_PATH
from ._slots import Slot, machine_gpus, plan, usable_cores

log = logging.getLogger(__name__)
RECORD = "slots.jsonl"
GRACE_S = 30.0  # after SIGTERM, how long a job may take to checkpoint before SIGKILL
POLL_S = 0.2
CHILD = "hydra_plugins.slots_launcher._child"


@dataclass
class Job:
    index: int  # in this launch's list
    number: int  # hydra.job.num
    overrides: Sequence[str]
    slot: Slot | None = None
    process: subprocess.Popen | None = None
    start: float = 0.0
    end: float = 0.0
    result: JobReturn | None = None
    exit: int | None = None  # 0: it returned a result; else its worker's exit status
    note: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def _slots(settings: dict[str, Any]) -> list[Slot]:
    devices = settings.get("devices")
    gpus = [str(d) for d in devices] if devices is not None else machine_gpus()
    return plan(
        usable_cores(),
        gpus,
        int(settings.get("gpus_per_job", 1)),
        int(settings.get("jobs_per_gpu", 1)),
        settings.get("cores_per_job"),
        settings.get("max_parallel"),
    )


def _environment(slot: Slot) -> dict[str, str]:
    import hydra_plugins

    env = dict(os.environ)
    env[PLUGIN_PATH] = os.pathsep.join(hydra_plugins.__path__)
    threads = str(len(slot.cores))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if slot.gpus:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(slot.gpus))
    return env


def _in_slot(cores: set[int]) -> None:
    """In the child before it runs Python: the slot's cores, and SIGTERM when the parent dies
    (Linux's PR_SET_PDEATHSIG), so that a killed sweep leaves no job running on."""
    if cores:
        os.sched_setaffinity(0, cores)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _worker(slot: Slot) -> subprocess.Popen:
    """A slot's worker process (``_child``): the slot's environment and cores from its start."""
    cores = set(slot.cores)
    return subprocess.Popen(
        [sys.executable, "-m", CHILD],
        stdin=subprocess.PIPE,
        text=True,
        env=_environment(slot),
        # in the sweep's process group (Ctrl-C, or a kill of the group, reaches every job, as
        # under the basic launcher), on its slot's cores, and told to stop if the sweep dies
        preexec_fn=lambda: _in_slot(cores),
    )


def _start(job: Job, slot: Slot, worker: subprocess.Popen, payload: bytes, tmp: Path) -> None:
    job.files = {"payload": tmp / f"{job.number}.pkl", "result": tmp / f"{job.number}.out"}
    job.files["payload"].write_bytes(payload)
    job.slot, job.process, job.start = slot, worker, time.time()
    assert worker.stdin is not None
    worker.stdin.write(f"{job.files['payload']}\t{job.files['result']}\n")
    worker.stdin.flush()
    log.info(
        "job %d started on slot %d (GPUs %s, cores %s)",
        job.number,
        slot.index,
        ",".join(slot.gpus) or "-",
        ",".join(map(str, slot.cores)),
    )


def _done(job: Job) -> int | None:
    """None while the job runs; else 0 (it left its result) or its worker's exit status."""
    assert job.process is not None
    if job.files["result"].is_file():
        return 0
    code = job.process.poll()
    if code is None or job.files["result"].is_file():  # (written just before its worker exited)
        return None if code is None else 0
    return code


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _finish(job: Job, code: int) -> None:
    job.end = time.time()
    result = job.files["result"]
    if result.is_file():
        job.result, job.exit = cloudpickle.loads(result.read_bytes()), 0
        return
    job.exit = code
    if code < 0:
        reason = f"job {job.number} was killed by {_signal_name(code)}"
        if code == -signal.SIGKILL:
            reason += " (the kernel's OOM killer sends it when memory runs out; see dmesg)"
    else:
        reason = f"job {job.number} exited with status {code} before returning a result"
    job.note = reason
    job.result = JobReturn(
        overrides=list(job.overrides), status=JobStatus.FAILED, _return_value=RuntimeError(reason)
    )


def _status(job: Job) -> str:
    if job.result is None:
        return "stopped"
    if job.note:
        return "killed" if "killed" in job.note else "failed"
    return "completed" if job.result.status == JobStatus.COMPLETED else "failed"


def _record(sweep_dir: Path, job: Job) -> None:
    assert job.slot is not None
    line = {
        "job": job.number,
        "overrides": list(job.overrides),
        "slot": job.slot.index,
        "devices": list(job.slot.gpus),
        "cores": list(job.slot.cores),
        "start": round(job.start, 3),
        "end": round(job.end, 3),
        "exit": job.exit,
        "status": _status(job),
    }
    with (sweep_dir / RECORD).open("a") as f:
        f.write(json.dumps(line) + "\n")


class Progress:
    """One log line per job start and end; on a terminal, a live line of the counts and the
    time left (finished jobs' mean duration x jobs left / slots)."""

    def __init__(self, total: int, slots: int, live: bool) -> None:
        self.total, self.slots, self.started = total, slots, time.time()
        self.live = live and sys.stderr.isatty()
        self.durations: list[float] = []
        self.failed = 0

    def ended(self, job: Job) -> None:
        status = _status(job)
        self.durations.append(job.end - job.start)
        self.failed += status != "completed"
        self._clear()
        log.info(
            "job %d %s in %.1f s on slot %d%s",
            job.number,
            status,
            job.end - job.start,
            job.slot.index if job.slot else -1,
            f": {job.note}" if job.note else "",
        )

    def show(self, running: int, queued: int) -> None:
        if not self.live:
            return
        done = len(self.durations)
        elapsed = time.time() - self.started
        left = ""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            left = f", ~{mean * (running / 2 + queued) / self.slots:.0f} s left"
        sys.stderr.write(
            f"\r[slots] {done - self.failed} done, {running} running, {self.failed} failed, "
            f"{queued} queued of {self.total}; {elapsed:.0f} s{left}\x1b[K"
        )
        sys.stderr.flush()

    def _clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")


def _retire(worker: subprocess.Popen) -> None:
    """End a worker between jobs: no more input, and it exits."""
    if worker.stdin is not None and not worker.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            worker.stdin.close()
    try:
        worker.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _stop(workers: list[subprocess.Popen]) -> None:
    """SIGTERM to every busy worker, SIGKILL to those still there after the grace."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signal.SIGTERM)
    deadline = time.time() + GRACE_S
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    slots = _slots(launcher.settings)
    log.info(
        "Slots launcher: %d job(s) on %d slot(s), sweep output dir: %s",
        len(job_overrides),
        len(slots),
        sweep_dir,
    )
    for slot in slots:
        log.info(
            "\tslot %d: GPUs %s, cores %s",
            slot.index,
            ",".join(slot.gpus) or "-",
            ",".join(map(str, slot.cores)),
        )
    jobs = [Job(i, initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    for job in jobs:
        log.info("\t#%d : %s", job.number, " ".join(filter_overrides(job.overrides)))
    state = Singleton.get_state()
    queue, free, running = deque(jobs), list(slots), []
    reuse = bool(launcher.settings.get("reuse_workers", True))
    workers: dict[int, subprocess.Popen] = {}  # slot index -> its worker
    progress = Progress(len(jobs), len(slots), bool(launcher.settings.get("progress", True)))
    stop: list[int] = []
    handlers = {
        s: signal.signal(s, lambda n, _: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with tempfile.TemporaryDirectory(prefix="slots-") as tmp:
            while (queue or running) and not stop:
                while queue and free:
                    job, slot = queue.popleft(), free.pop(0)
                    if slot.index not in workers or workers[slot.index].poll() is not None:
                        workers[slot.index] = _worker(slot)
                    payload = cloudpickle.dumps(
                        (job.number, job.overrides, launcher.hydra_context, launcher.config,
                         launcher.task_function, state)
                    )  # fmt: skip
                    _start(job, slot, workers[slot.index], payload, Path(tmp))
                    running.append(job)
                time.sleep(POLL_S)
                for job in list(running):
                    code = _done(job)
                    if code is None:
                        continue
                    _finish(job, code)
                    _record(sweep_dir, job)
                    progress.ended(job)
                    running.remove(job)
                    assert job.slot is not None
                    if not reuse or code:
                        _retire(workers.pop(job.slot.index))
                    free.append(job.slot)
                    free.sort(key=lambda s: s.index)
                progress.show(len(running), len(queue))
            if stop:
                progress._clear()
                log.warning(
                    "%s: stopping %d running job(s); %d not started",
                    signal.Signals(stop[0]).name,
                    len(running),
                    len(queue),
                )
                _stop([workers[j.slot.index] for j in running if j.slot is not None])
                for job in running:
                    job.end = time.time()
                    _record(sweep_dir, job)
            for worker in workers.values():
                _retire(worker)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if stop:
        raise KeyboardInterrupt if stop[0] == signal.SIGINT else SystemExit(128 + stop[0])
    return [job.result for job in jobs]
