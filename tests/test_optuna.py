"""``hparams_search``: an Optuna study kept in a SQLite file, so a search cut short continues."""

import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import PYTHON, TINY

pytestmark = pytest.mark.slow


def search(cwd, *extra, **kw):
    cmd = [PYTHON, "-m", "densenet_exp", "hparams_search=digits_optuna", *TINY, *extra]
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw
    )


def test_a_search_killed_after_two_trials_continues_in_the_same_study(tmp_path):
    args = ["hydra.sweeper.n_trials=3"]
    proc = search(tmp_path, *args, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("multirun/*/*/2_*")):  # the third trial began: two are told
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # after its second trial, in its third
    proc.wait(timeout=60)
    again = search(tmp_path, *args)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-3000:]
    db = tmp_path / "multirun" / "optuna.db"  # beside the sweeps, the preset's default
    study = optuna.load_study(study_name="digits_lr_wd", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    done = states.count(optuna.trial.TrialState.COMPLETE)
    assert done >= 2 + 3, states  # the first run's two, then three more in the same study
    sweeps = {p.parent.parent for p in tmp_path.glob("multirun/*/*/*/metrics.json")}
    assert len(sweeps) == 2  # two sweep folders, one study


def test_a_trial_that_fails_is_a_failed_trial_not_a_score(tmp_path):
    proc = search(
        tmp_path,
        "hydra.sweeper.study_name=failing",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.params={optim.lr:'choice(nan)'}",  # the search space is lr=nan alone
        "trainer.max_nonfinite_steps=1",
    )
    assert proc.wait(timeout=300) != 0  # the sweep says a job failed
    db = tmp_path / "multirun" / "optuna.db"
    study = optuna.load_study(study_name="failing", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
    assert study.trials[0].value is None
