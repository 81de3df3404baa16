"""A sweep cut short and run again with ``trainer.resume=auto`` ends as if never cut, under the
basic, joblib, submitit and slots launchers (a file of its own: it is long, and pytest-xdist runs
files side by side)."""

import csv
import os
import subprocess

import pytest
import torch
from conftest import PYTHON, ROOT, compose_cfg
from test_reliability import (
    LONGER,
    assert_same_end,
    final_state,
    kill_after_first_checkpoint,
    metric_rows,
)

from densenet_exp import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight_sweep_jobs(tmp_path_factory):
    """The three jobs of the sweep below, each trained in-process without interruption."""
    root = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's jobs: one thread each (see below)
    try:
        for act in ACTS:
            train(compose_cfg([*LONGER, f"act={act}"]), root / act)
    finally:
        torch.set_num_threads(threads)
    return root


ACTS = ("relu", "swish", "gelu")
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local"],
    "slots": ["hydra/launcher=slots", "hydra.launcher.cores_per_job=1"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_killed_sweep_run_again_with_resume_auto_ends_as_if_never_killed(
    tmp_path, launcher, straight_sweep_jobs
):
    """SIGKILL of the whole sweep once its second job has a checkpoint; the same command with
    trainer.resume=auto leaves finished jobs alone, resumes killed ones from their last
    checkpoint and runs those never started: every job ends as an uninterrupted run does."""
    sweep = tmp_path / "sweep"
    args = [*LONGER, f"act={','.join(ACTS)}", f"hydra.sweep.dir={sweep}", *LAUNCHERS[launcher]]
    # one thread a job under every launcher (joblib gives 2 jobs a core each): a convolution's
    # sums are grouped by thread, and the jobs must agree bit for bit with the straight runs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [PYTHON, "-m", "densenet_exp", "-m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_after_first_checkpoint(proc, sweep / "1_act=swish")
    jobs = [sweep / f"{i}_act={act}" for i, act in enumerate(ACTS)]
    done = [j for j in jobs if (j / "metrics.json").is_file()]
    assert len(done) < 3  # killed mid-sweep (basic: the first job done, the third not started)
    kept = {j: _files(j) for j in done}
    again = subprocess.run(
        [PYTHON, "-m", "densenet_exp", "-m", *args, "trainer.resume=auto"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    for job in done:  # finished jobs: not a step trained, not a byte rewritten
        assert _files(job) == kept[job]
    assert "resumed from" in (jobs[1] / "train.log").read_text()
    rows = {r["job"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert [rows[j.name]["status"] for j in jobs] == ["ok"] * 3
    for job, act in zip(jobs, ACTS):
        straight = straight_sweep_jobs / act
        assert_same_end(final_state(straight), final_state(job))
        assert metric_rows(straight) == metric_rows(job)


def _files(run):
    files = [run / "metrics.json", run / "metrics.jsonl", *(run / "checkpoints").iterdir()]
    return {p.name: p.read_bytes() for p in files}
