"""Sweeps, the sweep summary, diff and rerun, through the CLI as a user runs them."""

import csv
import importlib.util
import itertools
import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import PYTHON, ROOT, TINY, compose_cfg
from omegaconf import OmegaConf

from densenet_exp import val_predictions
from densenet_exp.config import MlflowLogger, node
from densenet_exp.runs import diff_runs, load_run, merge_overrides, write_summary
from densenet_exp.sweeps.cli import main
from densenet_exp.tracking import open_sweep

pytestmark = pytest.mark.slow


def cli(*args, cwd=ROOT, timeout=600):
    return subprocess.run(
        [PYTHON, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def job_dirs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir())


def job_names(sweep):
    return sorted(
        (p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()),
        key=lambda n: int(n.split("_")[0]),
    )


def test_a_2x2_sweep_writes_four_jobs_and_a_summary_with_their_choices(tiny_sweep):
    jobs = job_dirs(tiny_sweep)
    # named <job number>_<overrides>: readable, and unique through the number
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1", "2", "3"]
    assert [j.name for j in jobs] == [
        "0_act=relu,seed=0",
        "1_act=relu,seed=1",
        "2_act=swish,seed=0",
        "3_act=swish,seed=1",
    ]
    rows = read_csv(tiny_sweep / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert sorted((r["act"], r["overrides"].split()[-1]) for r in rows) == [
        ("relu", "trainer.seed=0"),
        ("relu", "trainer.seed=1"),
        ("swish", "trainer.seed=0"),
        ("swish", "trainer.seed=1"),
    ]
    tops = [float(r["best_val_top1"]) for r in rows]
    assert tops == sorted(tops, reverse=True)
    assert (tiny_sweep / "summary.md").read_text().count("| ok |") == 4
    assert (tiny_sweep / "summary.png").stat().st_size > 10_000


def test_a_sweep_of_two_rank_jobs_has_one_folder_each_and_a_failed_job_is_a_failed_row(tmp_path):
    # one sweep for both (each 2-rank job costs a launch): lr=nan fails at its second step
    sweep = tmp_path / "sweep"
    proc = cli(
        "densenet_exp",
        "-m",
        *TINY,
        "dist.nproc_per_node=2",
        "sched=constant",
        "trainer.max_nonfinite_steps=1",
        "optim.lr=0.05,nan",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode != 0
    assert "1 of 2 sweep job(s) failed" in proc.stderr
    assert [j.name for j in job_dirs(sweep)] == ["0_optim.lr=0.05", "1_optim.lr=nan"]
    assert json.loads((sweep / "0_optim.lr=0.05" / "metrics.json").read_text())["world_size"] == 2
    rows = {r["job"]: r for r in read_csv(sweep / "summary.csv")}
    assert set(rows) == {"0_optim.lr=0.05", "1_optim.lr=nan"}
    assert rows["0_optim.lr=0.05"]["status"] == "ok"
    assert rows["1_optim.lr=nan"]["status"] == "failed"
    assert rows["1_optim.lr=nan"]["error"].startswith("NonFiniteLossError: loss was non-finite")
    assert not list(ROOT.glob("outputs/*/*_rerun"))  # nothing leaked into the checkout


def test_a_2x2_seed_sweep_gives_a_table_by_configuration_and_a_comparison(tiny_sweep):
    sweep = tiny_sweep
    jobs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert jobs == [
        "0_act=relu,seed=0",
        "1_act=relu,seed=1",
        "2_act=swish,seed=0",
        "3_act=swish,seed=1",
    ]
    by_config = list(csv.DictReader((sweep / "summary_by_config.csv").open()))
    assert [(r["configuration"], r["n"]) for r in by_config] == [
        ("act=relu (baseline)", "2"),
        ("act=swish", "2"),
    ]
    compared = list(csv.DictReader((sweep / "compare.csv").open()))
    assert len(compared) == 1 and compared[0]["configuration"] == "act=swish"
    assert compared[0]["verdict"] in ("better", "worse", "equivalent", "undecided")
    assert compared[0]["test"] == "Welch t (2 vs 2 seeds)"
    for name in ("summary.png", "compare.png"):
        assert (sweep / name).stat().st_size > 10_000
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 4  # per job, as before
    for job in jobs:
        assert len(val_predictions.read(sweep / job / val_predictions.FINAL_FILE)) == 13
        assert (sweep / job / val_predictions.BEST_FILE).is_file()
        assert json.loads((sweep / job / "metrics.json").read_text())["macs_per_image"] > 0


def test_extend_trains_more_seeds_through_the_sweeps_own_launcher_and_names(
    tiny_sweep, tmp_path, capsys
):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep)
    # as if the sweep had run under the slots launcher: a look's jobs go out through it at once
    conf = yaml.safe_load((sweep / "multirun.yaml").read_text())
    conf["hydra"]["overrides"]["hydra"].append("hydra/launcher=slots")
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(conf))
    record = (sweep / "multirun.yaml").read_bytes()
    tracked = importlib.util.find_spec("mlflow") is not None  # the sweep's MLflow parent run
    if tracked:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        open_sweep(node(MlflowLogger, {"enabled": True, "tracking_uri": uri}), sweep, [])
    assert main(["extend", str(sweep), "--max-seeds", "4", "--no-plot"]) == 0
    # 2 seeds at a look that spends 0.0056 of the 5% decide nothing: both configurations go on
    assert job_names(sweep) == [
        "0_act=relu,seed=0",
        "1_act=relu,seed=1",
        "2_act=swish,seed=0",
        "3_act=swish,seed=1",
        "4_act=relu,seed=2",
        "5_act=relu,seed=3",
        "6_act=swish,seed=2",
        "7_act=swish,seed=3",
    ]
    new = load_run(sweep / "6_act=swish,seed=2")
    assert new.status == "ok" and new.seed == 2
    old = load_run(sweep / "2_act=swish,seed=0")
    assert [o for o in new.overrides if "seed" not in o] == [
        o for o in old.overrides if "seed" not in o
    ]
    assert (sweep / "multirun.yaml").read_bytes() == record  # the sweep's record is untouched
    # one multirun for the look's four jobs, side by side on the slots (one core each)
    slots = [json.loads(line) for line in (sweep / ".extend/look2_4/slots.jsonl").open()]
    assert sorted(s["job"] for s in slots) == [4, 5, 6, 7]
    if len(os.sched_getaffinity(0)) >= 2:
        assert any(
            a["start"] < b["end"] and b["start"] < a["end"] for a, b in itertools.pairwise(slots)
        )
    plan = json.loads((sweep / "extend.json").read_text())
    assert plan["looks"] == [2, 4] and plan["taken"] == 2
    assert plan["history"][0]["trained"] == {"act=relu": [2, 3], "act=swish": [2, 3]}
    assert len(read_csv(sweep / "summary.csv")) == 8
    compared = read_csv(sweep / "compare.csv")
    assert compared[0]["n"] == "4" and compared[0]["look"] == "2"
    assert "planned look 2 of 2" in capsys.readouterr().out
    if tracked:  # extend's last comparison is on the parent run
        from mlflow import MlflowClient

        parent_id = json.loads((sweep / "mlflow.json").read_text())["run_id"]
        parent = MlflowClient(uri).get_run(parent_id)
        assert parent.data.tags["verdict.act_swish"] == compared[0]["verdict"]
        assert parent.info.status == "FINISHED"
    # the plan is final: a second call trains nothing
    assert main(["extend", str(sweep), "--no-plot"]) == 0
    assert len(job_names(sweep)) == 8


def test_summarize_rebuilds_the_table_for_any_folder_of_runs(tiny_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep)
    (sweep / "summary.csv").unlink()
    # a job still running: no metrics.json yet, one epoch in metrics.jsonl
    running = sweep / "9_running"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "overrides.yaml").write_text("- act=mish\n")
    (running / "metrics.jsonl").write_text(
        json.dumps({"epoch": 0, "step": 4, "val_top1": 0.5}) + "\n"
    )
    assert main(["summarize", str(sweep), "--no-plot"]) == 0
    rows = {r["job"]: r for r in read_csv(sweep / "summary.csv")}
    assert rows["9_running"]["status"] == "running" and rows["9_running"]["best_val_top1"] == "0.5"
    assert len(rows) == 5
    assert "5 run(s)" in capsys.readouterr().out


def fake_run(path, overrides, config, summary):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"conv": config["conv"]["type"], "act": config["act"]["name"]}
    (path / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    (path / "metrics.json").write_text(json.dumps(summary))
    return path


def test_diff_reports_exactly_the_keys_that_differ(tmp_path, capsys):
    base = {
        "conv": {"type": "standard", "dilation": 1},
        "act": {"name": "relu"},
        "optim": {"lr": 0.1, "betas": [0.9, 0.99]},
        "trainer": {"epochs": 3},
    }
    other = {
        "conv": {"type": "dsconv", "dilation": 1},
        "act": {"name": "relu"},
        "optim": {"lr": 0.05, "betas": [0.9, 0.99]},
        "trainer": {"epochs": 3, "seed": 1},
    }
    a = fake_run(
        tmp_path / "a", ["conv=standard"], base, {"status": "completed", "best_val_top1": 0.9}
    )
    b = fake_run(
        tmp_path / "b", ["conv=dsconv"], other, {"status": "completed", "best_val_top1": 0.95}
    )
    d = diff_runs(load_run(a), load_run(b))
    assert d["groups"] == {"conv": ("standard", "dsconv")}
    assert d["values"] == {
        "conv.type": ("standard", "dsconv"),
        "optim.lr": (0.1, 0.05),
        "trainer.seed": (None, 1),
    }
    assert d["metrics"]["best_val_top1"] == (0.9, 0.95)
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "conv: standard -> dsconv" in out and "0.0500" in out  # the top-1 delta
    assert main(["diff", str(a), str(a)]) == 0  # identical runs: exit 0 too
    assert "(none)" in capsys.readouterr().out


def test_merge_overrides_replaces_keys_and_keeps_the_rest():
    assert merge_overrides(["conv=standard", "act=swish", "+x=1"], ["conv=dsconv", "x=2"]) == [
        "act=swish",
        "conv=dsconv",
        "x=2",
    ]


def test_rerun_switches_the_whole_group_and_equals_a_fresh_run(tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    assert cli("densenet_exp", *TINY, "act=swish", f"hydra.run.dir={parent}").returncode == 0
    # in-process: rerun itself starts the training command line (the process that matters)
    assert main(["rerun", str(parent), "conv=dsconv", "conv.dilation=2", "--out", str(child)]) == 0
    # what a fresh command line with the same overrides composes (and Hydra saves as config.yaml)
    fresh = compose_cfg([*TINY, "act=swish", "conv=dsconv", "conv.dilation=2"])
    fresh_cfg = yaml.safe_load(OmegaConf.to_yaml(fresh))
    child_cfg = yaml.safe_load((child / ".hydra" / "config.yaml").read_text())
    assert child_cfg == fresh_cfg
    assert child_cfg["conv"] == {
        "type": "dsconv",
        "kernel_size": 3,
        "dilation": 2,
        "inner_bn": True,
        "_target_": None,  # type=custom only
        "params": {},
    }
    assert (child / "parent.txt").read_text().startswith(str(parent.resolve()))
    diff = (child / "diff.txt").read_text()
    assert (
        "conv: standard -> dsconv" in diff
        and "act" not in diff.split("config values")[0].split("group choices that differ:")[1]
    )


def test_write_summary_handles_an_empty_folder(tmp_path):
    assert write_summary(tmp_path) == []


def test_the_choices_read_from_hydra_yaml_equal_the_whole_files_parse(tiny_sweep):
    for hydra_file in sorted(tiny_sweep.glob("*/.hydra/hydra.yaml")):
        whole = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"]
        run = load_run(hydra_file.parent.parent)
        assert run.choices == {k: v for k, v in whole.items() if not k.startswith("hydra/")}
        assert run.choices["act"] in ("relu", "swish")
