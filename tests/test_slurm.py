"""``hydra/launcher=submitit_slurm`` for real, against a stand-in for SLURM's commands on this
machine (tests/slurm_standin.py says what it emulates and what it does not): sweep jobs named and
summarized as under the basic launcher, two-node jobs whose nodes start in reverse order, and a
job signalled before its time limit that submitit requeues and that finishes as if never stopped.
"""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
from conftest import PYTHON, ROOT, TINY, compose_cfg

from densenet_exp import train

pytestmark = pytest.mark.slow


MLFLOW = importlib.util.find_spec("mlflow") is not None  # the `mlflow` extra (`make test`)

# SLURM_REAL=1 (benchmarks/slurm_real.sh): the real scheduler's commands, already on PATH
REAL = bool(os.environ.get("SLURM_REAL"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment of a login node: the stand-in's sbatch, srun, sacct, ... first on PATH."""
    if REAL:
        return {**os.environ, "OMP_NUM_THREADS": "1"}
    root = tmp_path_factory.mktemp("slurm")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "slurm_standin.py"),
            "install",
            root / "bin",
            root / "state",
        ],
        check=True,
    )
    # one thread a job, as the in-process reference run below
    return {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def sweep(env, args, **kw):
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "densenet_exp",
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.timeout_min=60",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def results(sweep_dir, job):
    """What each SLURM task of a job returned to the launcher (submitit's result files)."""
    out = {}
    for path in sorted((sweep_dir / ".submitit").glob(f"*_{job}/*_result.pkl")):
        with path.open("rb") as f:
            tag, value = pickle.load(f)  # submitit's own file: (outcome, Hydra's JobReturn)
        out[path.name.split("_")[-2]] = value.return_value if tag == "success" else tag
    return out


@pytest.mark.parametrize("nodes", [1, 2], ids=["one_node", "two_nodes"])
def test_a_sweep_names_summarizes_and_returns_rank_0s_result_on_every_node(slurm, tmp_path, nodes):
    if (nodes == 2) == REAL:
        # the stand-in: the two-node case covers naming and summary too; one real host: one node
        pytest.skip("two nodes with the stand-in only" if REAL else "one node: real SLURM only")
    out = tmp_path / "sweep"
    env = {**slurm, "SLURM_STANDIN_REVERSE": "2"}  # SLURM's second node starts 2 s first
    many = [f"hydra.launcher.nodes={nodes}", "hydra.launcher.tasks_per_node=1"]
    if nodes > 1:
        many += [f"dist.nnodes={nodes}", "dist.nproc_per_node=1", "dist.rdzv_endpoint=slurm"]
    proc = sweep(
        env, [*TINY, "act=relu,swish", *many, "dist.timeout_s=60", f"hydra.sweep.dir={out}"]
    )
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    jobs = sorted(p.name for p in out.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0_act=relu", "1_act=swish"]  # as the basic launcher names them
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in r for r in rows[1:])
    for i, job in enumerate(jobs):
        summary = json.loads((out / job / "metrics.json").read_text())
        assert summary["world_size"] == nodes and summary["status"] == "completed"
        # every node hands Hydra global rank 0's objective, whichever node torch made rank 0
        assert results(out, i) == {str(t): summary["best_val_top1"] for t in range(nodes)}


LONG = [
    *TINY,
    "data.synthetic_train_size=384",
    "trainer.epochs=3",
    "trainer.deterministic=true",
    "trainer.ckpt_every_n_steps=5",
    "data.augment=light",
]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_job_signalled_before_its_time_limit_is_requeued_and_ends_as_if_never_stopped(
    slurm, tmp_path, ranks
):
    """One rank trains in submitit's task itself; two are spawned by it, and the task passes the
    signal on and lets submitit requeue only once they have checkpointed."""
    out = tmp_path / "sweep"
    args = [*LONG, f"dist.nproc_per_node={ranks}"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the requeued run must continue its MLflow run
    tracked = ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}"] if MLFLOW else []
    proc = sweep(slurm, [*args, *tracked, f"hydra.sweep.dir={out}"])
    run = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(out.glob("0_*/checkpoints/last.pt"))
        if found:
            run = found[0].parent.parent
            break
        time.sleep(0.02)
    assert run is not None and proc.poll() is None, "the job ended before it could be signalled"
    job = next((out / ".submitit").glob("*/*_submitted.pkl")).parent.name  # the SLURM job id
    # the signal SLURM sends ahead of a time limit (sbatch --signal=USR2@90), to the job's task
    subprocess.run(["scancel", "--signal=USR2", job], env=slurm, check=True)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    text = (run / "train.log").read_text()
    assert "SIGUSR2: stopped at step" in text  # it checkpointed on the signal
    assert "SLURM requeued this job (restart 1): resuming from its last checkpoint" in text
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    if MLFLOW:  # one MLflow run for the job, killed by the signal, then continued to the end
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        (job_run,) = [r for r in runs if r.data.tags.get("kind") != "sweep"]
        assert job_run.info.status == "FINISHED" and job_run.info.run_name == run.name
        steps = [m.step for m in client.get_metric_history(job_run.info.run_id, "val_top1")]
        assert steps == [0, 1, 2]  # each evaluation once, however the job was cut
        assert f"MLflow: continuing run {job_run.info.run_id}" in text
    straight = tmp_path / "straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_cfg(args), straight)
    finally:
        torch.set_num_threads(threads)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
