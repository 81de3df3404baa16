import json
import subprocess

import pytest
import torch
from conftest import PYTHON, TINY, compose_cfg

from densenet_exp import train
from densenet_exp.engine import loss_fn
from densenet_exp.optim import lr_factor

METRIC_ROW_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "img_per_s",
    "peak_mem_mb",
    "time_s",
}
SUMMARY_KEYS = {
    "best_val_top1",
    "final_val_top1",
    "epochs",
    "steps",
    "params",
    "img_per_s",
    "peak_mem_mb",
    "wall_s",
    "world_size",
    "status",
}


def test_a_tiny_run_writes_the_documented_run_directory(tmp_path):
    run = tmp_path / "run"
    summary = train(compose_cfg([*TINY, "trainer.epochs=2"]), run)
    assert set(summary) >= SUMMARY_KEYS and summary["status"] == "completed"
    assert summary["epochs"] == 2 and summary["steps"] == 8 and summary["world_size"] == 1
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["best_val_top1"] == summary["best_val_top1"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(set(r) >= METRIC_ROW_KEYS for r in rows)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "train.log").read_text().count("epoch 1 |") == 1
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["classes"] == ["class_0", "class_1", "class_2"]
        assert state["eval_transform"]["image_size"] == 8
        assert state["config"]["model"]["growth_rate"] == 4
        assert {"model", "optimizer", "scheduler", "precision", "ranks", "epoch"} <= set(state)
        assert {"rng", "loss_sum", "loss_count"} <= set(state["ranks"][0])
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_continues_from_the_saved_epoch_and_step(tmp_path):
    run = tmp_path / "run"
    first = train(compose_cfg([*TINY, "trainer.epochs=1"]), run)
    assert first["steps"] == 4
    resumed = train(compose_cfg([*TINY, "trainer.epochs=3", "trainer.resume=auto"]), run)
    assert resumed["steps"] == 12 and resumed["epochs"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert "resumed from" in (run / "train.log").read_text()


def written(run):
    """What a run wrote that a resume could change: metrics, predictions, checkpoints, events."""
    files = [run / "metrics.json", run / "metrics.jsonl", *run.glob("val_predictions*")]
    files += [*(run / "checkpoints").glob("*"), *(run / "tb").rglob("*")]
    return {str(p.relative_to(run)): p.read_bytes() for p in files if p.is_file()}


def test_resuming_a_finished_run_changes_nothing_it_wrote(tmp_path, caplog):
    run = tmp_path / "run"
    first = train(compose_cfg([*TINY, "trainer.epochs=1"]), run)
    before = written(run)
    for resume in ("auto", f"{run}/checkpoints/last.pt"):
        again = train(compose_cfg([*TINY, "trainer.epochs=1", f"trainer.resume={resume}"]), run)
        assert again == first and written(run) == before
    assert caplog.text.count("finished already (epoch 1, step 4): nothing to train") == 2


def test_a_run_stopped_at_max_steps_never_passes_them_resumed_or_not(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.epochs=3", "trainer.max_steps=6"]
    assert train(compose_cfg(args), run)["steps"] == 6  # 4 steps an epoch: stops inside epoch 1
    before = written(run)
    assert train(compose_cfg([*args, "trainer.resume=auto"]), run)["steps"] == 6
    assert written(run) == before
    # killed after last.pt but before metrics.json: the resume evaluates, trains no 7th step
    (run / "metrics.json").unlink()
    again = train(compose_cfg([*args, "trainer.resume=auto"]), run)
    assert again["steps"] == 6 and again["final_val_top1"] is not None
    assert written(run)["metrics.jsonl"] == before["metrics.jsonl"]  # no second evaluation
    # more steps continue it
    more = train(
        compose_cfg([*TINY, "trainer.epochs=3", "trainer.max_steps=10", "trainer.resume=auto"]), run
    )
    assert more["steps"] == 10 and more["epochs"] == 3


def test_resume_from_a_different_architecture_names_the_keys(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(TINY), run)
    cfg = compose_cfg(
        [*TINY, "model.block_config=[2,3]", "trainer.epochs=2", "trainer.resume=auto"]
    )
    with pytest.raises(RuntimeError, match=r"different architecture.*denseblock2\.denselayer3"):
        train(cfg, run)


def test_a_run_that_ends_diverged_fails_and_saves_no_diverged_checkpoint(tmp_path):
    """Two ranks, lr=1e12: the losses turn NaN before max_nonfinite_steps counts to its limit.
    The run used to complete with a NaN final val loss and a NaN model as last.pt and best.pt."""
    run = tmp_path / "run"
    cfg = compose_cfg(
        [
            *TINY,
            "optim.lr=1e12",
            "trainer.epochs=2",
            "trainer.max_nonfinite_steps=100",
            "dist.nproc_per_node=2",
        ]
    )
    with pytest.raises(RuntimeError, match="training ended with a diverged model"):
        train(cfg, run)
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    for ckpt in (run / "checkpoints").glob("*.pt") if (run / "checkpoints").exists() else []:
        state = torch.load(ckpt, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values()), ckpt
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any(r.get("best") for r in rows)


def test_non_finite_loss_stops_with_the_step_and_keeps_best(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(TINY), run)
    best = (run / "checkpoints" / "best.pt").read_bytes()
    # same run directory, no resume: the diverging run must not touch the earlier best.pt
    cfg = compose_cfg(
        [
            *TINY,
            "optim.lr=1e12",
            "trainer.epochs=4",
            "trainer.max_nonfinite_steps=2",
            "sched=constant",
        ]
    )
    with pytest.raises(RuntimeError, match=r"non-finite for 2 consecutive steps, last at step \d+"):
        train(cfg, run)
    assert (run / "checkpoints" / "best.pt").read_bytes() == best
    status = json.loads((run / "metrics.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLossError" in status["error"]


@pytest.mark.parametrize(
    "extra",
    [
        ["conv=dsconv", "act=prelu", "init=orthogonal", "optim=adamw"],
        [
            "trainer.loss=focal",
            "trainer.label_smoothing=0.1",
            "sched=poly",
            "trainer.grad_accum=2",
            "trainer.grad_clip=1.0",
            "trainer.ema=0.9",
        ],
        [
            "amp=O2",
            "model.memory_efficient=true",
            "trainer.channels_last=true",
            "sched=multistep",
            "trainer.ckpt_every_n_steps=2",
        ],
    ],
)
def test_option_combinations_train_to_completion(tmp_path, extra):
    summary = train(compose_cfg([*TINY, *extra]), tmp_path / "run")
    assert summary["status"] == "completed" and summary["final_val_top1"] is not None


def test_focal_loss_is_per_sample_and_reduces_to_ce_at_gamma_zero():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    ce = loss_fn(logits, target, "ce", 0.0, 2.0)
    torch.testing.assert_close(loss_fn(logits, target, "focal", 0.0, 0.0), ce)
    p_t = logits.softmax(1)[torch.arange(6), target]
    expected = (-((1 - p_t) ** 2) * p_t.log()).mean()
    torch.testing.assert_close(loss_fn(logits, target, "focal", 0.0, 2.0), expected)


def test_lr_schedules_warm_up_per_iteration_and_end_where_they_should():
    kw = dict(steps_per_epoch=10, total_steps=100, warmup_epochs=1.0)
    assert lr_factor(0, "cos", **kw) == pytest.approx(0.1)
    assert lr_factor(9, "cos", **kw) == pytest.approx(1.0)
    assert lr_factor(100, "cos", **kw) == pytest.approx(0.0)
    assert lr_factor(100, "cos", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    assert lr_factor(55, "poly", power=1.0, **kw) == pytest.approx(0.5)
    assert lr_factor(35, "step", step_size=3, gamma=0.5, steps_per_epoch=10, total_steps=100) == 0.5
    ms = dict(milestones=(2, 5), gamma=0.1, steps_per_epoch=10, total_steps=100)
    assert [lr_factor(s, "multistep", **ms) for s in (19, 20, 50)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(77, "constant", **kw) == 1.0


def test_cli_trains_two_ranks_in_one_run_directory_with_hydras_files(tmp_path):
    # The one command-line training run of the suite (an interpreter start costs ~5-10 s), so it
    # carries the checks that need the real entry point: Hydra's files, one directory for two
    # ranks, and basic layers (no bottleneck) with synchronized BatchNorm across those ranks.
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "densenet_exp",
            *TINY,
            "dist.nproc_per_node=2",
            "sync_bn=true",
            "model.bottleneck=false",
            "model.compression=0.5",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert {p.name for p in (run / ".hydra").iterdir()} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    }
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert "global batch 16" in (run / "train.log").read_text()


def test_eval_every_and_log_every_control_when_rows_and_lines_are_written(tmp_path):
    run = tmp_path / "run"
    cfg = compose_cfg(
        [*TINY, "trainer.epochs=3", "trainer.eval_every=2", "trainer.log_every_n_steps=3"]
    )
    train(cfg, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # every 2nd epoch, and always the last
    log = (run / "train.log").read_text()
    assert [f"step {s} |" in log for s in (3, 6, 9, 12)] == [True] * 4
    assert "step 4 |" not in log


@pytest.mark.parametrize(
    "options, backend",
    [
        (["conv=dsconv", "act=prelu", "trainer.channels_last=true"], "aot_eager"),
        # bf16 weights with fp32 BN and fp32 master weights in the optimizer, under compile: the
        # one test that generates and runs Inductor's code end to end (~30 s on 2 cores)
        (["amp=O2", "act=swish"], "inductor"),
    ],
    ids=["O0-dsconv-prelu-channels_last", "O2-swish"],
)
def test_compile_trains_with_the_memory_efficient_layers(tmp_path, monkeypatch, options, backend):
    from torch._dynamo.utils import counters

    compiled = []
    real_compile = torch.compile

    def compile_with(model, **kw):
        compiled.append(type(model).__name__)
        return real_compile(model, backend=backend, **kw)

    monkeypatch.setattr(torch, "compile", compile_with)
    cfg = compose_cfg(
        [
            *TINY,
            "trainer.compile=true",
            "trainer.max_steps=2",
            "model.memory_efficient=true",
            "model.impl=fast",  # its memory-efficient layers compile without graph breaks
            *options,
        ]
    )
    counters.clear()
    summary = train(cfg, tmp_path / "r")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert compiled, "trainer.compile=true did not compile the model"
    assert counters["stats"]["unique_graphs"] >= 1  # the steps ran through compiled graphs
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_the_metrics_files_follow_their_one_typed_definition(tmp_path):
    from dataclasses import fields

    from densenet_exp.metrics import EpochRow, RunSummary
    from densenet_exp.runs import load_run

    run = tmp_path / "run"
    train(compose_cfg([*TINY, "trainer.epochs=2"]), run)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk) == {f.name for f in fields(RunSummary)} - {"error"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r) == {f.name for f in fields(EpochRow)} for r in rows)
    # the run tools read the same definition: without metrics.json, the rows stand in for it
    (run / "metrics.json").unlink()
    partial = load_run(run)
    assert partial.metric("best_val_top1") == max(r["val_top1"] for r in rows)
    assert partial.metric("epochs") == 2 and partial.metric("wall_s") == rows[-1]["time_s"]
