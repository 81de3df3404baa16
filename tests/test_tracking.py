"""The `logger` group and MLflow: every run read back through MLflow's own client, from a fresh
SQLite store in a temporary folder."""

import csv
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, ROOT, TINY, compose_cfg

from densenet_exp import train
from densenet_exp.config import MlflowLogger, node
from densenet_exp.engine import TrainingInterrupted
from densenet_exp.overrides import is_configuration_key
from densenet_exp.tracking.store import MlflowMissing, check_settings

mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra: `make test` installs it
MlflowClient = mlflow.MlflowClient

pytestmark = pytest.mark.slow


def store(tmp_path):
    return f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"


def mlflow_args(uri, *more):
    return [*TINY, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", *more]


def runs_of(uri, experiment=None):
    """Every run of the store (of one experiment, by name), oldest first."""
    client = MlflowClient(uri)
    if experiment is not None:
        ids = [client.get_experiment_by_name(experiment).experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    return sorted(client.search_runs(ids), key=lambda r: r.info.start_time)


def history(uri, run, key):
    """The metric's points as (step, value), by step (as MLflow draws them)."""
    points = MlflowClient(uri).get_metric_history(run.info.run_id, key)
    return sorted((m.step, m.value) for m in points)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the group ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, tensorboard, mlflow_on",
    [
        (None, True, False),
        ("logger=tensorboard", True, False),
        ("logger=mlflow", False, True),
        ("logger=none", False, False),
        ("logger=[tensorboard,mlflow]", True, True),
        ("logger=[mlflow]", False, True),
    ],
)
def test_the_logger_group_turns_on_what_it_names_and_nothing_else(override, tensorboard, mlflow_on):
    cfg = compose_cfg([override] if override else [])
    assert cfg.logger.tensorboard.enabled is tensorboard
    assert cfg.logger.mlflow.enabled is mlflow_on


def test_how_a_run_was_logged_is_no_part_of_its_configuration():
    assert not is_configuration_key("logger")  # logger=mlflow
    assert not is_configuration_key("logger.mlflow.tracking_uri")
    assert not is_configuration_key("trainer.seed")
    assert is_configuration_key("loggers_x") and is_configuration_key("model.growth_rate")


def test_mlflow_settings_with_mlflow_off_fail_before_any_work(tmp_path):
    cfg = compose_cfg([*TINY, f"logger.mlflow.tracking_uri={store(tmp_path)}"])
    with pytest.raises(
        ValueError,
        match=r"logger\.mlflow\.tracking_uri='sqlite.*' set but MLflow is off.*logger=mlflow",
    ):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "db").exists()


def test_mlflow_missing_is_said_before_any_work_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(MlflowMissing, match=r"pip install -e '\.\[mlflow\]'"):
        check_settings(node(MlflowLogger, {"enabled": True}))


# -- a sweep through the CLI, whose jobs are the runs the tests below read ------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-job sweep under the joblib launcher, 2 jobs at once writing one SQLite store, with
    both loggers on, as a user starts it; the tests below only read it."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri, sweep = store(tmp), tmp / "sweep"
    args = [
        "-m",
        *TINY,
        "trainer.epochs=3",
        "act=relu,swish",
        "trainer.log_every_n_steps=1",
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={uri}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(
        [PYTHON, "-m", "densenet_exp", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, sweep


@pytest.fixture(scope="module")
def cli_run(sweep):
    """The sweep's act=swish job: (store, its folder, its MLflow run)."""
    uri, sweep_dir = sweep
    (run,) = [r for r in runs_of(uri) if r.info.run_name == "1_act=swish"]
    return uri, sweep_dir / "1_act=swish", run


def flat(node, prefix=""):
    if isinstance(node, dict) and node:
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_params_are_the_composed_config_key_for_key(cli_run):
    _, run_dir, run = cli_run
    config = flat(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()))
    params = run.data.params
    assert set(params) == set(config)
    for key, value in config.items():
        # strings as written, everything else as JSON (null, [2, 2], true, 0.1)
        assert params[key] == (value if isinstance(value, str) else json.dumps(value)), key
    assert params["act.name"] == "swish" and params["model.block_config"] == "[2, 2]"


def test_one_metric_point_per_evaluation_at_its_epoch(cli_run):
    uri, run_dir, run = cli_run
    evaluations = rows(run_dir)
    assert len(evaluations) == 3
    for key in ("val_top1", "val_top5", "val_loss", "train_loss", "lr"):
        assert history(uri, run, key) == [(r["epoch"], pytest.approx(r[key])) for r in evaluations]
    assert history(uri, run, "global_step") == [(r["epoch"], r["step"]) for r in evaluations]
    # trainer.log_every_n_steps=1: the train loss at every optimizer step, once each
    steps = [s for s, _ in history(uri, run, "train_loss_step")]
    assert steps == list(range(1, evaluations[-1]["step"] + 1))


def test_the_summary_and_status_match_metrics_json(cli_run):
    _, run_dir, run = cli_run
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    for key in ("best_val_top1", "final_val_top1", "params", "macs_per_image", "img_per_s"):
        assert run.data.metrics[key] == pytest.approx(summary[key]), key
    assert run.data.metrics["peak_mem_mb"] == pytest.approx(summary["peak_mem_mb"])


def test_tags_name_the_choices_configuration_seed_folder_and_commit(cli_run):
    _, run_dir, run = cli_run
    tags = run.data.tags
    assert tags["choice.act"] == "swish" and tags["choice.model"] == "densenet_bc_digits"
    assert tags["choice.data"] == "synthetic" and "choice.logger" not in tags
    # the configuration: its overrides less how it was run (seed, logger, log_every_n_steps)
    label = tags["configuration"].split(",")
    assert "act=swish" in label and "trainer.epochs=3" in label
    assert not any(o.startswith(("logger", "trainer.log_every", "hydra")) for o in label)
    assert tags["seed"] == "42" and tags["run_dir"] == str(run_dir) and tags["job"] == "1"
    assert run.info.run_name == run_dir.name
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode == 0:
        assert tags["mlflow.source.git.commit"] == commit.stdout.strip()


def test_artifacts_are_the_run_s_files_beside_the_database(cli_run, tmp_path):
    uri, run_dir, run = cli_run
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "metrics.jsonl", "val_predictions.csv", "config"} <= names
    assert not any(n.startswith("checkpoints") for n in names)  # log_checkpoints=false
    config = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert {"config/config.yaml", "config/overrides.yaml", "config/hydra.yaml"} <= config
    got = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == json.loads((run_dir / "metrics.json").read_text())
    db_folder = run_dir.parent.parent / "db"
    assert run.info.artifact_uri.startswith((db_folder / "mlartifacts").as_uri())
    assert (run_dir / "tb").is_dir()  # both loggers ran
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id


# -- runs in-process ------------------------------------------------------------------------------
def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    uri, run_dir = store(tmp_path), tmp_path / "run"
    args = mlflow_args(uri, "trainer.log_every_n_steps=1", "logger.mlflow.log_checkpoints=true")
    train(compose_cfg([*args, "trainer.epochs=1"]), run_dir)
    (first,) = runs_of(uri, experiment="densenet_exp")  # a run of no sweep: ours
    assert first.info.status == "FINISHED"
    train(compose_cfg([*args, "trainer.epochs=2", "trainer.resume=auto"]), run_dir)
    (run,) = runs_of(uri)  # the same run, not a second one
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert [s for s, _ in history(uri, run, "val_top1")] == [0, 1]
    steps = [s for s, _ in history(uri, run, "train_loss_step")]
    assert steps == sorted(set(steps)) and steps[-1] == rows(run_dir)[-1]["step"]
    assert not (run_dir / "tb").exists()  # logger=mlflow alone
    saved = MlflowClient(uri).list_artifacts(run.info.run_id, "checkpoints")
    assert {a.path for a in saved} == {"checkpoints/last.pt", "checkpoints/best.pt"}


def test_a_run_resumed_after_its_mlflow_run_was_deleted_gets_a_whole_new_one(tmp_path):
    uri, run_dir = store(tmp_path), tmp_path / "run"
    train(compose_cfg([*mlflow_args(uri), "trainer.epochs=1"]), run_dir)
    (first,) = runs_of(uri)
    MlflowClient(uri).delete_run(first.info.run_id)  # deleted in the UI
    train(compose_cfg([*mlflow_args(uri), "trainer.epochs=2", "trainer.resume=auto"]), run_dir)
    (run,) = runs_of(uri)  # search_runs: the active ones
    assert run.info.run_id != first.info.run_id and run.info.status == "FINISHED"
    # the epoch trained before the resume comes from metrics.jsonl, at its own value
    assert history(uri, run, "val_top1") == [(r["epoch"], r["val_top1"]) for r in rows(run_dir)]


def test_a_failing_run_is_failed_with_its_error(tmp_path):
    uri, empty = store(tmp_path), tmp_path / "empty"
    empty.mkdir()
    cfg = compose_cfg(mlflow_args(uri, "data=imagefolder", f"data.root={empty}"))
    with pytest.raises(Exception, match="no class folders"):
        train(cfg, tmp_path / "run")
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert "no class folders" in run.data.tags["error"]


def test_an_interrupted_run_is_killed(tmp_path, monkeypatch):
    uri = store(tmp_path)

    def stop(*args, **kwargs):
        raise TrainingInterrupted("SIGTERM: stopped at step 4")

    monkeypatch.setattr("densenet_exp.engine.loop.validate", stop)
    cfg = compose_cfg(mlflow_args(uri, "logger.mlflow.experiment_name=mine"))
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "run")
    (run,) = runs_of(uri, experiment="mine")
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"


def test_a_store_that_cannot_be_opened_warns_and_the_run_completes(tmp_path, caplog):
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"  # its folder cannot be made
    summary = train(compose_cfg(mlflow_args(uri, "trainer.epochs=2")), tmp_path / "run")
    assert summary["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(uri in w and "training goes on" in w for w in warnings), warnings
    assert len(rows(tmp_path / "run")) == 2 and not (tmp_path / "run" / "mlflow.json").exists()


def test_a_store_failing_mid_run_warns_and_gets_the_evaluations_at_the_end(
    tmp_path, caplog, monkeypatch
):
    uri, calls = store(tmp_path), {"n": 0}
    real = MlflowClient.log_batch

    def outage(self, run_id, metrics=(), **kwargs):
        if any(m.key == "val_top1" for m in metrics):
            calls["n"] += 1
            if calls["n"] == 1:  # the first evaluation finds the store down
                raise mlflow.exceptions.MlflowException("database is locked")
        return real(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", outage)
    train(compose_cfg(mlflow_args(uri, "trainer.epochs=3")), tmp_path / "run")
    assert any("database is locked" in r.getMessage() for r in caplog.records)
    (run,) = runs_of(uri)
    assert [s for s, _ in history(uri, run, "val_top1")] == [0, 1, 2]
    assert run.info.status == "FINISHED"


def test_a_locked_store_is_waited_for(tmp_path):
    uri = store(tmp_path)
    MlflowClient(uri).search_experiments()  # make the database
    lock = sqlite3.connect(
        tmp_path / "db" / "mlflow.db", isolation_level=None, check_same_thread=False
    )
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds it while the run starts
    threading.Timer(2.0, lock.rollback).start()
    summary = train(compose_cfg(mlflow_args(uri, "trainer.epochs=2")), tmp_path / "run")
    assert summary["status"] == "completed"
    (run,) = runs_of(uri)
    assert len(history(uri, run, "val_top1")) == 2 and run.info.status == "FINISHED"


def test_a_two_rank_run_logs_once(tmp_path):
    uri = store(tmp_path)
    cfg = compose_cfg(mlflow_args(uri, "trainer.epochs=2", "dist.nproc_per_node=2"))
    assert train(cfg, tmp_path / "run")["world_size"] == 2
    (run,) = runs_of(uri)
    assert [s for s, _ in history(uri, run, "val_top1")] == [0, 1]
    assert run.data.metrics["world_size"] == 2


def test_a_two_job_joblib_sweep_is_one_experiment_with_its_comparison(sweep):
    uri, sweep_dir = sweep
    runs = runs_of(uri, experiment=str(sweep_dir))  # not below the repo: the absolute path
    assert len(runs_of(uri)) == len(runs) == 3  # nothing in any other experiment
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    jobs = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in jobs) == ["0_act=relu", "1_act=swish"]
    for job in jobs:
        assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert job.data.tags["sweep"] == str(sweep_dir) and job.info.status == "FINISHED"
        assert len(history(uri, job, "val_top1")) == 3
    with (sweep_dir / "compare.csv").open() as f:
        (row,) = csv.DictReader(f)  # what the sweep's comparison says of act=swish
    verdicts = {r.data.tags["choice.act"]: r.data.tags["verdict"] for r in jobs}
    assert verdicts == {"relu": "baseline", "swish": row["verdict"]}
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["verdict.act_swish"] == row["verdict"]
    delta = parent.data.metrics["delta_top1.act_swish"]
    assert delta == pytest.approx(float(row["delta_top1"]))
    names = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "compare.md", "compare.csv"} <= names
