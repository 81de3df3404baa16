"""The slots launcher (``hydra/launcher=slots``): slots planned from cores and GPUs, jobs side by
side that never share a core or (unless packed) a GPU, a queue that refills the moment a job ends,
results in job order, failed and killed jobs reported. GPUs are simulated: ``devices`` lists them
and each job records the CUDA_VISIBLE_DEVICES it was given instead of using CUDA."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, TINY

from hydra_plugins.slots_launcher._slots import Slot, plan

APP = Path(__file__).with_name("slots_app.py")


def test_slots_share_out_cores_and_gpus_and_the_errors_name_the_values():
    assert plan([0, 1], []) == [Slot(0, (), (0,)), Slot(1, (), (1,))]
    assert plan([0, 1, 2, 3], [], cores_per_job=2) == [Slot(0, (), (0, 1)), Slot(1, (), (2, 3))]
    gpus = plan(list(range(8)), ["0", "1", "2", "3"], gpus_per_job=2)
    assert [s.gpus for s in gpus] == [("0", "1"), ("2", "3")]
    assert [s.cores for s in gpus] == [(0, 1, 2, 3), (4, 5, 6, 7)]  # the cores shared out
    packed = plan(list(range(4)), ["0", "1"], jobs_per_gpu=2)
    assert [s.gpus for s in packed] == [("0",), ("1",), ("0",), ("1",)]  # spread, then pack
    assert len({c for s in packed for c in s.cores}) == 4  # no core twice
    assert len(plan([0, 1], ["0", "1", "2", "3"])) == 2  # never more jobs than cores
    assert len(plan(list(range(8)), [], max_parallel=3)) == 3
    with pytest.raises(ValueError, match="gpus_per_job=3, but 2 GPU"):
        plan([0, 1], ["0", "1"], gpus_per_job=3)
    with pytest.raises(ValueError, match=r"jobs_per_gpu=2 .* gpus_per_job=2"):
        plan([0, 1], ["0", "1"], gpus_per_job=2, jobs_per_gpu=2)
    with pytest.raises(ValueError, match=r"cores_per_job=2 x 2 job\(s\) at once needs 4 cores"):
        plan([0, 1], ["0", "1"], cores_per_job=2)
    with pytest.raises(ValueError, match="cores_per_job=0: must be"):
        plan([0, 1], [], cores_per_job=0)


def sweep(
    tmp_path: Path, *args: str, name: str = "sweep"
) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / name
    cmd = [PYTHON, str(APP), "-m", "hydra/launcher=slots", f"hydra.sweep.dir={out}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "slots.jsonl").read_text().splitlines()]


def overlapping(rows: list[dict]):
    return [
        (a, b) for a, b in combinations(rows, 2) if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def test_two_one_core_slots_never_share_a_core_and_a_long_job_does_not_hold_the_queue(tmp_path):
    proc, out = sweep(tmp_path, "hydra.launcher.cores_per_job=1", "hydra.launcher.devices=[]",
                      "sleep=6,0.1,0.2,0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    assert sorted(r["job"] for r in rows) == [0, 1, 2, 3]
    assert overlapping(rows), "the jobs ran one after another"
    for a, b in overlapping(rows):
        assert not set(a["cores"]) & set(b["cores"]), (a, b)
    for r in rows:  # each job ran on the cores of its slot, with as many threads
        where = json.loads((out / str(r["job"]) / "where.json").read_text())
        assert where["cores"] == r["cores"] and where["omp_num_threads"] == "1"
    long = next(r for r in rows if r["job"] == 0)
    assert all(r["end"] < long["end"] for r in rows if r["job"] != 0)  # refilled, not batched
    assert "job 0 completed in" in proc.stdout and "slot 1" in proc.stdout


def test_simulated_gpus_are_never_shared_unless_packed_and_a_two_gpu_job_gets_two(tmp_path):
    proc, out = sweep(tmp_path, "hydra.launcher.devices=[0,1,2,3]", "hydra.launcher.gpus_per_job=2",
                      "sleep=1,1,1,1", name="pairs")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    for r in rows:
        where = json.loads((out / str(r["job"]) / "where.json").read_text())
        assert where["cuda_visible_devices"] == ",".join(map(str, r["devices"]))
        assert len(r["devices"]) == 2 and where["device_order"] == "PCI_BUS_ID"
    assert overlapping(rows)
    for a, b in overlapping(rows):
        assert not set(a["devices"]) & set(b["devices"]), (a, b)
    proc, out = sweep(tmp_path, "hydra.launcher.devices=[0]", "hydra.launcher.jobs_per_gpu=2",
                      "sleep=1,1", name="packed")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    assert [r["devices"] for r in rows] == [["0"], ["0"]] and overlapping(rows)
    assert not set(rows[0]["cores"]) & set(rows[1]["cores"])


def test_a_failing_and_a_killed_job_are_failed_results_and_the_others_run_on(tmp_path):
    proc, out = sweep(tmp_path, "hydra.launcher.devices=[]", "fail=false,true", "kill=false,true",
                      "sleep=0.5")  # fmt: skip
    assert proc.returncode != 0
    rows = {r["job"]: r for r in records(out)}
    assert len(rows) == 4  # every job ran
    # jobs: (fail, kill) = (F, F), (F, T), (T, F), (T, T)
    assert rows[0]["status"] == "completed" and (out / "0" / "where.json").is_file()
    assert rows[1]["status"] == "killed" and rows[1]["exit"] == -9
    assert rows[2]["status"] == "failed"
    assert "job 1 was killed by SIGKILL (the kernel's OOM killer" in proc.stdout + proc.stderr


def test_an_optuna_search_gets_every_trials_value_back_through_the_launcher(tmp_path):
    """Results come back in job order: the sweeper tells each trial its own objective."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc, out = sweep(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=slots",
        "hydra.launcher.devices=[]",
        "value=interval(0,1)",
        "sleep=0.3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna

    trials = optuna.load_study(study_name="slots", storage=storage).trials
    assert len(trials) == 4
    for trial in trials:  # each trial's objective is the value it was given
        assert trial.value == pytest.approx(trial.params["value"])
    assert len(records(out)) == 4


def test_two_two_rank_jobs_run_side_by_side_each_with_its_own_rendezvous(tmp_path):
    out = tmp_path / "ranks"
    launcher = ["hydra/launcher=slots", "hydra.launcher.devices=[]", f"hydra.sweep.dir={out}"]
    cmd = [PYTHON, "-m", "densenet_exp", "-m", *TINY, "dist.nproc_per_node=2", "act=relu,swish"]
    cmd += launcher
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = records(out)
    assert len(rows) == 2 and overlapping(rows)  # side by side, one core each
    for name in ("0_act=relu", "1_act=swish"):
        summary = json.loads((out / name / "metrics.json").read_text())
        assert summary["status"] == "completed" and summary["world_size"] == 2


def test_sigterm_to_the_sweep_stops_every_job_and_ends_the_sweep(tmp_path):
    out = tmp_path / "stopped"
    cmd = [PYTHON, str(APP), "-m", "hydra/launcher=slots", f"hydra.sweep.dir={out}"]
    cmd += ["hydra.launcher.devices=[]", "sleep=60,61,62"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while len(list(out.glob("*/started.json"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [json.loads(p.read_text())["pid"] for p in out.glob("*/started.json")]
        assert len(pids) == 2  # two slots busy, the third job queued
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        proc.kill()  # whatever failed above, no sweep is left running
    assert proc.returncode != 0 and "SIGTERM: stopping 2 running job(s); 1 not started" in output
    for pid in pids:  # no job left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert len(records(out)) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_counts_the_jobs_and_estimates_the_time_left(monkeypatch):
    from hydra_plugins.slots_launcher._core import Progress

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(total=5, slots=2, live=True)
    progress.show(running=2, queued=3)
    assert "[slots] 0 done, 2 running, 0 failed, 3 queued of 5" in screen.getvalue()
    assert "left" not in screen.getvalue()  # nothing finished: no estimate yet
    progress.durations.append(10.0)  # one job finished, in 10 s
    progress.show(running=2, queued=2)
    # 10 s a job: 2 running (half done on average) + 2 queued over 2 slots
    assert screen.getvalue().endswith("~15 s left\x1b[K")
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    Progress(total=5, slots=2, live=False).show(
        running=1, queued=0
    )  # hydra.launcher.progress=false
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("reuse", [True, False])
def test_a_slot_runs_its_jobs_in_one_worker_unless_told_otherwise(tmp_path, reuse):
    proc, out = sweep(tmp_path, "hydra.launcher.devices=[]", "hydra.launcher.max_parallel=1",
                      f"hydra.launcher.reuse_workers={reuse}", "sleep=0,0.1,0.2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids = {json.loads((out / str(j) / "where.json").read_text())["pid"] for j in range(3)}
    assert len(pids) == (1 if reuse else 3)
    assert [r["slot"] for r in records(out)] == [0, 0, 0]  # max_parallel=1: one slot


def test_the_jobs_sweeper_launches_a_list_of_jobs_at_once_numbered_from_first_job_num(tmp_path):
    """``hydra/sweeper=jobs`` (what ``runs extend`` sends a look through): jobs that are no
    cartesian product, one batch, side by side on the launcher's slots, numbered on from an
    earlier sweep's; a job may set its own folder."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("- [sleep=1, value=1]\n- [sleep=1, value=2, fail=true]\n"
                    f"- [value=3, \"hydra.sweep.subdir='{tmp_path}/own,name'\"]\n")  # fmt: skip
    proc, out = sweep(tmp_path, "hydra/sweeper=jobs", f"hydra.sweeper.jobs_file={jobs}",
                      "hydra.sweeper.first_job_num=5", "hydra.launcher.devices=[]",
                      "kill=false")  # fmt: skip
    assert proc.returncode != 0 and "told to fail" in proc.stderr  # the failed job, at the end
    rows = {r["job"]: r for r in records(out)}
    assert sorted(rows) == [5, 6, 7] and overlapping([rows[5], rows[6]])
    assert rows[6]["status"] == "failed" and rows[5]["status"] == rows[7]["status"] == "completed"
    overrides = {n: r["overrides"] for n, r in rows.items()}
    assert overrides[5] == ["kill=false", "sleep=1", "value=1"]  # the command line's, then its own
    assert (out / "5" / "where.json").is_file() and (tmp_path / "own,name" / "where.json").is_file()
    proc, _ = sweep(tmp_path, "hydra/sweeper=jobs", "hydra.sweeper.jobs=[['value=1']]", "sleep=1,2",
                    name="swept")  # fmt: skip
    assert proc.returncode != 0 and "sweeps sleep=1,2: list those jobs" in proc.stderr
