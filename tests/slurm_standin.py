"""A stand-in for SLURM's sbatch, srun, sacct, scontrol and scancel: enough for submitit, one host.

``python slurm_standin.py install BIN_DIR STATE_DIR`` writes the five commands into BIN_DIR; put it
first on PATH. What it does:

- ``sbatch FILE`` reads the ``#SBATCH`` lines (``--array``, ``--nodes``, ``--ntasks-per-node``,
  ``--output``, ``--error``), prints "Submitted batch job N" and runs each array task's script in
  the background, with SLURM's variables (job and array ids, node list, task counts,
  ``SLURM_RESTART_COUNT``); a task requeued while it runs is run again when it ends.
- ``srun [options] CMD`` starts nodes x tasks-per-node copies of CMD with ``SLURM_PROCID``,
  ``SLURM_NODEID`` and ``SLURM_LOCALID``, output to the ``--output``/``--error`` patterns, and
  waits for all. ``SLURM_STANDIN_REVERSE=S`` starts them last task first, S seconds apart.
- ``sacct -j ID ...`` prints ``JobID|State|NodeList`` rows; ``scontrol requeue ID`` marks a task
  to run again (SIGTERM to it, as SLURM); ``scancel ID [--signal SIG]`` cancels or signals it.

What it does not emulate: several hosts (every "node" is this machine, named ``localhost`` and
``127.0.0.1``), resources (CPUs, GPUs, memory, cgroups), queues and priorities, time limits and
``--signal=SIG@T`` timers (a test sends the signal itself), accounting beyond the job state, job
steps, and any option it does not name above.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scontrol", "scancel")
NODES = ("localhost", "127.0.0.1")  # two names for this machine: the first is rank 0's host
STATE = Path(os.environ.get("SLURM_STANDIN_STATE", "/nonexistent"))


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _task_file(job: str, index: str) -> Path:
    return STATE / f"task_{job}_{index}.json"


def _job_id(job: str, index: str) -> str:
    """SLURM's name for an array task (``1001_0``) or a single job (``1001``)."""
    return f"{job}_{index}" if index else job


def _pattern(text: str, job: str, index: str, task: str = "0") -> str:
    text = text.replace("%A", job).replace("%a", index).replace("%j", _job_id(job, index))
    return text.replace("%t", task)


def sbatch(args: list[str]) -> int:
    script = Path(args[-1]).resolve()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script.read_text(), re.M))
    job = str(len(list(STATE.glob("job_*.json"))) + 1001)
    if "array" in opts:
        first, _, last = opts["array"].split("%")[0].partition("-")
        indices = [str(i) for i in range(int(first), int(last or first) + 1)]
    else:
        indices = [""]  # a single job: no array index
    nodes = int(opts.get("nodes", 1))
    _save(STATE / f"job_{job}.json", {"opts": opts, "script": str(script), "indices": indices})
    for index in indices:
        _save(_task_file(job, index), {"state": "PENDING", "requeue": False, "nodes": nodes})
        subprocess.Popen(
            [sys.executable, __file__, "_run", job, index],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    print(f"Submitted batch job {job}")
    return 0


def _await_folder(path: str, timeout_s: float = 30.0) -> None:
    """Wait for the folder of a task's log: submitit makes ``%A_%a/`` only once sbatch has told it
    the job id, and this stand-in starts a task at once, where SLURM's queue gives it the time."""
    folder = Path(path).parent
    deadline = time.monotonic() + timeout_s
    while not folder.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    folder.mkdir(parents=True, exist_ok=True)


def _run(job: str, index: str) -> int:
    """One array task: its script run until it ends without a pending requeue; a task that could
    not even start is FAILED, never left PENDING (a sweep waiting on it would hang)."""
    try:
        return _run_task(job, index)
    except BaseException:
        task = json.loads(_task_file(job, index).read_text())
        _save(_task_file(job, index), {**task, "state": "FAILED"})
        raise


def _run_task(job: str, index: str) -> int:
    spec = json.loads((STATE / f"job_{job}.json").read_text())
    opts, restarts = spec["opts"], 0
    nodes = int(opts.get("nodes", 1))
    per_node = int(opts.get("ntasks-per-node", 1))
    while True:
        array = {"SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": index} if index else {}
        env = {
            **os.environ,
            **array,
            "SLURM_JOB_ID": f"{job}{index}",  # each array task has a job id of its own
            "SLURM_STANDIN_TASK": f"{job}/{index}",
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": ",".join(NODES[:nodes]),
            "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_RESTART_COUNT": str(restarts),
        }
        out = _pattern(opts.get("output", "/dev/null"), job, index)
        err = _pattern(opts.get("error", "/dev/null"), job, index)
        _await_folder(out)
        _await_folder(err)
        with open(out, "a") as stdout, open(err, "a") as stderr:
            proc = subprocess.Popen(
                ["bash", spec["script"]],
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            task = json.loads(_task_file(job, index).read_text())
            _save(_task_file(job, index), {**task, "state": "RUNNING", "pgid": proc.pid})
            code = proc.wait()
        task = json.loads(_task_file(job, index).read_text())
        if task.get("requeue"):
            restarts += 1
            _save(_task_file(job, index), {**task, "requeue": False, "state": "PENDING"})
            continue
        if task.get("state") != "CANCELLED":
            _save(_task_file(job, index), {**task, "state": "COMPLETED" if code == 0 else "FAILED"})
        return code


VALUE_OPTIONS = {
    "--output",
    "--error",
    "--cpu-bind",
    "--ntasks",
    "-n",
    "--nodes",
    "-N",
    "--ntasks-per-node",
    "--job-name",
    "-J",
    "--time",
    "-t",
}


def srun(args: list[str]) -> int:
    opts, i = {}, 0
    while i < len(args) and args[i].startswith("-"):
        key, eq, value = args[i].partition("=")
        if not eq and key in VALUE_OPTIONS:
            i, value = i + 1, args[i + 1]
        opts[key] = value
        i += 1
    command = args[i:]
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    job, _, index = os.environ["SLURM_STANDIN_TASK"].partition("/")
    order = list(range(ntasks))
    delay = float(os.environ.get("SLURM_STANDIN_REVERSE", "0") or 0)
    if delay:
        order.reverse()
    procs = []
    for n, t in enumerate(order):
        if n and delay:
            time.sleep(delay)
        env = {
            **os.environ,
            "SLURM_PROCID": str(t),
            "SLURM_NODEID": str(t // per_node),
            "SLURM_LOCALID": str(t % per_node),
            "SLURMD_NODENAME": NODES[t // per_node],
            "SLURM_STEP_ID": "0",
        }
        out = _pattern(opts.get("--output", "/dev/null"), job, index, str(t))
        err = _pattern(opts.get("--error", "/dev/null"), job, index, str(t))
        with open(out, "a") as stdout, open(err, "a") as stderr:
            procs.append(subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr))
    task = json.loads(_task_file(job, index).read_text())
    _save(_task_file(job, index), {**task, "pids": [p.pid for p in procs]})

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    return max(p.wait() for p in procs)


def _tasks(ids: list[str]) -> list[tuple[str, str]]:
    found = []
    for jid in ids:
        job, _, index = jid.partition("_")
        for f in sorted(STATE.glob(f"task_{job}_*.json")):
            i = f.stem.split("_", 2)[2]
            if not index or i == index:
                found.append((job, i))
    return found


def sacct(args: list[str]) -> int:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job, index in _tasks(ids):
        task = json.loads(_task_file(job, index).read_text())
        print(f"{_job_id(job, index)}|{task['state']}|{','.join(NODES[: task['nodes']])}")
    return 0


def _signal_group(task: dict, sig: int) -> None:
    with contextlib.suppress(KeyError, ProcessLookupError):
        os.killpg(task["pgid"], sig)


def scontrol(args: list[str]) -> int:
    if args[:1] != ["requeue"]:
        print(f"slurm stand-in: scontrol {' '.join(args)} is not emulated", file=sys.stderr)
        return 1
    # called from inside the job (submitit's requeue), so in the group it signals: not itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for job, index in _tasks(args[1].split(",")):
        task = json.loads(_task_file(job, index).read_text())
        _save(_task_file(job, index), {**task, "requeue": True})
        _signal_group(task, signal.SIGTERM)  # SLURM ends the running job, then queues it again
    return 0


def scancel(args: list[str]) -> int:
    sig = None
    rest = []
    for i, a in enumerate(args):
        if a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif a == "--signal":
            sig = args[i + 1]
        elif i == 0 or args[i - 1] != "--signal":
            rest.append(a)
    for job, index in _tasks(rest):
        task = json.loads(_task_file(job, index).read_text())
        if sig:  # to the tasks srun started, as `scancel --signal` does
            for pid in task.get("pids", []):
                with contextlib.suppress(ProcessLookupError):  # a task that has ended
                    os.kill(pid, getattr(signal, f"SIG{sig.removeprefix('SIG')}"))
        else:
            _save(_task_file(job, index), {**task, "state": "CANCELLED"})
            _signal_group(task, signal.SIGKILL)
    return 0


def install(bin_dir: str, state_dir: str) -> None:
    Path(bin_dir).mkdir(parents=True, exist_ok=True)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = Path(bin_dir) / name
        path.write_text(
            f'#!/bin/sh\nSLURM_STANDIN_STATE="{state_dir}" exec "{sys.executable}" '
            f'"{Path(__file__).resolve()}" {name} "$@"\n'
        )
        path.chmod(0o755)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "install":
        install(*rest)
    elif command == "_run":
        sys.exit(_run(*rest))
    else:
        sys.exit(globals()[command](rest))
