"""What a new user meets first: real photo folders, the end of a run, --help, rerun, workers."""

import csv
import logging
import subprocess

import pytest
import torch
import yaml
from conftest import PYTHON, ROOT, TINY, compose_cfg
from PIL import Image

from densenet_exp import train
from densenet_exp.data import build_datasets, build_loaders, resolve_num_workers
from densenet_exp.data.imagefolder import build_imagefolder_splits
from densenet_exp.precision import PrecisionError, describe, resolve_spec
from densenet_exp.predict import gather_inputs
from densenet_exp.predict import main as predict_main
from densenet_exp.process import JOB_CORES_ENV, cores_per_rank, job_cores, too_few_cores
from densenet_exp.sweeps.cli import main as runs_main

COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
# names a photo collection picks up from notebooks, file managers, zips and NAS boxes
IGNORED_DIRS = [".ipynb_checkpoints", ".thumbnails", ".Trash-1000", "__MACOSX", "@eaDir"]


def photo_folder(root):
    """train/val class folders of real images, littered with what tools leave behind.

    Every ignored file is a PNG that decodes (so a scan that took it would use it); a class-level
    ignored folder holds a would-be class, a nested one holds images of the class.
    """
    real = []
    for split in ("train", "val"):
        for cls, rgb in COLOURS.items():
            folder = root / split / cls
            (folder / "more").mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (10, 12), rgb).save(folder / f"{i}.png")
                real.append(folder / f"{i}.png")
            Image.new("RGB", (10, 12), rgb).save(folder / "more" / "deep.png")  # sub-folders count
            real.append(folder / "more" / "deep.png")
            # inside the class folder: tool folders, AppleDouble twins, a hidden file
            for name in IGNORED_DIRS:
                (folder / name).mkdir()
                Image.new("RGB", (10, 12), (0, 255, 0)).save(folder / name / "x.png")
            (folder / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
            Image.new("RGB", (10, 12), (0, 255, 0)).save(folder / ".hidden.png")
        # at the class level: tool folders that would become classes
        for name in IGNORED_DIRS:
            (root / split / name / "cat").mkdir(parents=True)
            Image.new("RGB", (10, 12), (0, 255, 0)).save(root / split / name / "cat" / "y.png")
            Image.new("RGB", (10, 12), (0, 255, 0)).save(root / split / name / "z.png")
    return sorted(real)


def is_ignored_path(path, root):
    parts = path.relative_to(root).parts
    return any(p.startswith(".") or p in IGNORED_DIRS for p in parts)


def test_hidden_and_tool_folders_are_ignored_at_every_level_and_never_read(
    tmp_path, monkeypatch, caplog
):
    root = tmp_path / "photos"
    real = photo_folder(root)
    opened = []
    original_open = Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return original_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    cfg = compose_cfg(
        [
            "data=imagefolder",
            f"data.root={root}",
            "data.image_size=8",
            "data.batch_size=4",
            "data.num_workers=0",
            *[o for o in TINY if not o.startswith("data")],
            "trainer.epochs=2",
        ]
    )
    with caplog.at_level(logging.INFO):
        summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    # said once, at INFO, naming what was left out
    said = [r for r in caplog.records if "ignored" in r.getMessage() and r.levelno == logging.INFO]
    assert len(said) == 1
    assert "train/.ipynb_checkpoints/" in said[0].getMessage()
    assert "ignored 38 " in said[0].getMessage()  # 2 splits x (5 + 2 classes x (5 + 2 files))
    train_s, val_s, classes = build_imagefolder_splits(root)
    assert classes == ["cat", "dog"]
    assert sorted(p for p, _ in train_s + val_s) == [str(p) for p in real]
    assert opened and all(not is_ignored_path(p, root) for p in map(type(root), opened))

    # predict on the same folder: only the real images, and evaluate=true uses the same rules
    listed = gather_inputs(root / "val")
    assert listed == [p for p in real if "val" in p.parts]
    out = tmp_path / "p.csv"
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    code = predict_main(
        [f"checkpoint={ckpt}", f"input={root / 'val'}", f"output={out}", "evaluate=true"]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == [str(p) for p in real if "val" in p.parts]


def test_a_folder_inside_a_hidden_folder_is_still_read(tmp_path):
    # the rules apply inside the data root, not to the folders above it (~/.cache/...)
    root = tmp_path / ".cache" / "photos"
    photo_folder(root)
    assert len(gather_inputs(root / "val")) == 10
    assert build_imagefolder_splits(root)[2] == ["cat", "dog"]


def test_num_workers_auto_takes_what_the_cores_allow_and_a_number_is_kept(monkeypatch):
    for cores in (1, 2, 3, 16, 64):
        workers = resolve_num_workers("auto", cores)
        assert 0 <= workers < cores and workers <= 8
    assert resolve_num_workers("auto", 1) == 0 and resolve_num_workers("auto", 4) == 3
    assert resolve_num_workers(6, 2) == 6 and resolve_num_workers("3", 1) == 3
    with pytest.raises(ValueError, match="'auto' or a number"):
        resolve_num_workers("many", 2)
    monkeypatch.setenv(JOB_CORES_ENV, "6")  # a parallel launcher's share of the machine
    assert job_cores() == 6 and cores_per_rank(2) == 3 and cores_per_rank(4) == 1
    monkeypatch.delenv(JOB_CORES_ENV)
    assert job_cores() >= 1
    assert compose_cfg(["data=imagefolder", "data.root=x"]).data.num_workers == "auto"


def test_more_cpu_ranks_than_cores_is_said_with_the_fix(monkeypatch):
    """A 2-rank job on a one-core slot (the slots launcher's CPU default) runs, but slowly: the
    run says so and names the launcher key that gives the job its cores."""
    monkeypatch.setenv(JOB_CORES_ENV, "1")
    said = too_few_cores(2)
    assert "2 CPU ranks on 1 core(s)" in said and "hydra.launcher.cores_per_job=2" in said
    assert too_few_cores(1) is None
    monkeypatch.setenv(JOB_CORES_ENV, "4")
    assert too_few_cores(2) is None and too_few_cores(4) is None


def test_the_loader_gets_the_resolved_worker_count(digits_root):
    # the per-image path (a decoded split hands out whole batches, with no workers)
    cfg = compose_cfg([f"data.root={digits_root}", "data.num_workers=auto", "data.cache=none"])
    bundle = build_datasets(cfg.data)
    cpu = torch.device("cpu")
    train_loader, val_loader, _ = build_loaders(bundle, cfg.data, 0, 1, 0, cpu, cores=2)
    assert train_loader.num_workers == val_loader.num_workers == 1
    cfg = compose_cfg([f"data.root={digits_root}", "data.num_workers=0", "data.cache=none"])
    assert build_loaders(bundle, cfg.data, 0, 1, 0, cpu, cores=16)[0].num_workers == 0


@pytest.mark.parametrize(
    "level, dtype, expected",
    [
        ("O0", "auto", "O0: fp32 throughout, no loss scaling"),
        ("O1", "auto", "O1: bf16 autocast, fp32 weights, no loss scaling"),
        ("O1", "float16", "O1: fp16 autocast, fp32 weights, dynamic loss scaling"),
        (
            "O2",
            "float16",
            "O2: fp16 weights and compute, fp32 BatchNorm, fp32 master weights, "
            "dynamic loss scaling",
        ),
        ("O3", "auto", "O3: bf16 weights and compute, bf16 BatchNorm, no loss scaling"),
    ],
)
def test_the_precision_is_said_in_words(level, dtype, expected):
    cfg = compose_cfg([f"amp={level}", f"amp.dtype={dtype}"])
    assert describe(resolve_spec(cfg.amp, torch.device("cpu"))) == expected


def test_a_static_loss_scale_is_said_too():
    cfg = compose_cfg(["amp=O3", "amp.loss_scale=128"])
    assert describe(resolve_spec(cfg.amp, torch.device("cpu"))).endswith("loss scale 128")
    with pytest.raises(PrecisionError):
        resolve_spec(compose_cfg(["amp=O3", "amp.loss_scale=-1"]).amp, torch.device("cpu"))


def test_the_end_of_a_run_says_where_it_is_its_best_epoch_and_what_to_type_next(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        summary = train(compose_cfg([*TINY, "trainer.epochs=3"]), run)
    block = caplog.records[-1].getMessage()
    assert block.startswith("\nrun completed in")
    best, epoch = summary["best_val_top1"], summary["best_epoch"]
    assert f"best val top-1 {best:.4f} at epoch {epoch}" in block
    history = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_row = max(history, key=lambda r: r["val_top1"])  # the first of the best
    assert summary["best_epoch"] == best_row["epoch"]
    assert f"run directory: {run.resolve()}" in block
    assert f"checkpoint={run.resolve() / 'checkpoints' / 'best.pt'}" in block
    assert "trainer.resume=auto" in block and "runs diff" in block


def test_a_failed_run_says_where_its_log_and_last_checkpoint_are(tmp_path, caplog):
    run = tmp_path / "run"
    cfg = compose_cfg(
        [
            *TINY,
            "trainer.epochs=3",
            "sched=constant",
            "optim.lr=1e12",
            "trainer.max_nonfinite_steps=1",
        ]
    )
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError):
        train(cfg, run)
    block = caplog.records[-1].getMessage()
    assert "run failed after" in block and "NonFiniteLossError" in block
    assert f"log: {run.resolve() / 'train.log'}" in block
    assert "last checkpoint:" in block


def test_help_says_what_the_program_does_with_examples():
    proc = subprocess.run(
        [PYTHON, "-m", "densenet_exp", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0
    out = proc.stdout
    assert "powered by Hydra" not in out
    assert out.startswith("densenet_exp: train DenseNet image classifiers")
    assert "python -m densenet_exp data=imagefolder data.root=" in out
    assert "python -m densenet_exp -m conv=standard,dsconv" in out
    assert "outputs/<date>/<time>/" in out
    groups = {line.split(": ")[0]: line for line in out.splitlines() if ": " in line}
    assert "densenet121" in groups["model"] and "dsconv" in groups["conv"]  # Hydra's group list
    assert "growth_rate:" in out  # and the config


def fake_parent(path, overrides):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return path


def test_rerun_trains_in_the_folder_hydra_run_dir_names_and_nowhere_else(tmp_path, monkeypatch):
    parent = fake_parent(tmp_path / "parent", TINY)
    target = tmp_path / "chosen"
    monkeypatch.chdir(tmp_path)  # where a relative outputs/ would appear
    assert runs_main(["rerun", str(parent), f"hydra.run.dir={target}"]) == 0
    assert (target / "metrics.json").is_file() and (target / "parent.txt").is_file()
    assert (target / "diff.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen", "parent"]  # no outputs/


def test_rerun_refuses_an_out_that_contradicts_hydra_run_dir(tmp_path, capsys):
    parent = fake_parent(tmp_path / "parent", TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    assert runs_main(["rerun", str(parent), f"hydra.run.dir={a}", "--out", str(b)]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err
    assert not a.exists() and not b.exists()


def sweep_job_names(tmp_path, launcher):
    sweep = tmp_path / launcher
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "densenet_exp",
            "-m",
            *TINY,
            "conv=standard,dsconv",
            "trainer.max_steps=1",
            f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())


@pytest.mark.slow
def test_submitit_sweep_jobs_are_named_as_under_the_basic_launcher(tmp_path):
    # what the basic launcher names these jobs (test_runs pins its naming on the shared sweep)
    basic = ["0_conv=standard", "1_conv=dsconv"]
    assert sweep_job_names(tmp_path, "submitit_local") == basic


def test_a_sweep_job_closes_with_one_line_and_the_sweep_says_what_to_type_next(tmp_path):
    from densenet_exp.closing import closing_block, sweep_next_steps

    job = tmp_path / "sweep" / "3_act=swish,seed=1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    summary = {"status": "completed", "final_val_top1": 0.9, "best_val_top1": 0.95, "wall_s": 75}
    line = closing_block(job, summary)
    top = "final val top-1 0.9000 (best 0.9500)"
    assert line == f"job 3_act=swish,seed=1: completed, {top}, 1 min 15 s, {job}"
    failed = closing_block(job, {"status": "failed", "error": "boom\nmore", "wall_s": 3})
    assert failed == f"job 3_act=swish,seed=1: failed (boom), 3 s, {job}"
    sweep = tmp_path / "sweep"
    steps = sweep_next_steps(sweep, True, [], ["act=relu,swish"])
    assert f"runs effects {sweep}" in steps and f"extend {sweep} --by effects" in steps
    assert "resume" not in steps
    steps = sweep_next_steps(
        sweep, False, ["1_act=swish"], ["act=relu,swish", "trainer.resume=null"]
    )
    assert "effects" not in steps and "--by effects" not in steps
    assert (
        f"python -m densenet_exp -m act=relu,swish hydra.sweep.dir={sweep} trainer.resume=auto"
        in steps
    )
