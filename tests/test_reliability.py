"""Losing nothing: exact resume after SIGKILL, SIGTERM, bad checkpoints, bad input."""

import json
import os
import pickle
import signal
import subprocess
import time

import pytest
import torch
from conftest import PYTHON, ROOT, TINY, compose_cfg

from densenet_exp import distributed as du
from densenet_exp import train
from densenet_exp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from densenet_exp.data import DataError

pytestmark = pytest.mark.slow

# long enough to be killed mid-run: 24 steps per epoch, checkpoints every 5 steps
LONGER = [
    *TINY,
    "data.synthetic_train_size=192",
    "trainer.epochs=2",
    "trainer.deterministic=true",
    "trainer.ckpt_every_n_steps=5",
    "data.augment=light",
]


# Only the killed run is a process of its own (the kill is the point); the uninterrupted run and
# the resume train in-process, which saves an interpreter start (~4-10 s) each.
def start(args, run, **kw):
    # the killed run computes with this process's thread count, as the in-process runs do: a
    # convolution's sums are grouped by thread, and the runs must agree bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(
        [PYTHON, "-m", "densenet_exp", *args, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def kill_after_first_checkpoint(proc, run, sig=signal.SIGKILL):
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    return torch.load(last, weights_only=True)


def final_state(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def assert_same_end(a, b):
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]), i
    assert a["scheduler"] == b["scheduler"] and a["global_step"] == b["global_step"]


def metric_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: r[k] for k in ("epoch", "step", "train_loss", "val_loss", "val_top1", "lr")}
        for r in rows
    ]


def cached_digits(root):
    """The digits decoded once into RAM, the train augmentation on the training device."""
    return [
        *[o for o in TINY if not o.startswith("data.")],
        "data=digits",
        f"data.root={root}",
        "data.image_size=8",
        "data.batch_size=8",
        "data.cache=ram",  # and augment_on=auto: light, per image, on the batch
        "trainer.max_steps=120",  # within the first epoch: the resume starts mid-epoch
        "trainer.deterministic=true",
        "trainer.ckpt_every_n_steps=5",
    ]


@pytest.mark.parametrize("case", ["workers", "two_ranks_cached"])
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(
    tmp_path, case, digits_root, monkeypatch
):
    # loader workers (their prefetched batches must not be skipped or repeated), or two ranks
    # reading the decoded cache with per-image augmentation on the device (one test: each
    # case starts a killed process and two sets of ranks)
    args = (
        [*LONGER, "data.num_workers=2"]
        if case == "workers"
        else [*cached_digits(digits_root), "dist.nproc_per_node=2"]
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    steps = train(compose_cfg(args), straight)["steps"]
    # launching ranks split the cores through OMP_NUM_THREADS, and must not leave it behind for
    # the processes the caller starts later (the killed run below would get one thread)
    assert "OMP_NUM_THREADS" not in os.environ
    if case == "two_ranks_cached":
        log = (straight / "train.log").read_text()
        assert "train augmentation on the training device" in log and "world 2" in log
    state = kill_after_first_checkpoint(start(args, killed), killed)
    assert state["global_step"] % 5 == 0 and state["global_step"] < steps
    assert train(compose_cfg([*args, "trainer.resume=auto"]), killed)["status"] == "completed"
    assert_same_end(final_state(straight), final_state(killed))
    assert metric_rows(straight) == metric_rows(killed)


def test_sigterm_finishes_the_step_writes_last_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = start([*LONGER, "trainer.epochs=50", "trainer.ckpt_every_n_steps=1000"], run)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    stderr = proc.stderr.read()
    assert "SIGTERM: stopped at step" in stderr and "trainer.resume=auto" in stderr
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["status"] == "interrupted"
    state = final_state(run)
    assert state["batch_in_epoch"] > 0 or state["epoch"] > 0
    assert (run / "checkpoints" / "best.pt").exists()


def test_a_truncated_last_checkpoint_is_detected_and_auto_resume_falls_back(tmp_path, caplog):
    run = tmp_path / "run"
    train(compose_cfg([*TINY, "trainer.epochs=2"]), run)
    last = run / "checkpoints" / "last.pt"
    prev = run / "checkpoints" / "last.prev.pt"
    assert torch.load(prev, weights_only=True)["epoch"] == 1  # the previous last.pt is kept
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"cannot load checkpoint {last}"):
        load_checkpoint(last)
    summary = train(compose_cfg([*TINY, "trainer.epochs=3", "trainer.resume=auto"]), run)
    assert "skipping cannot load checkpoint" in caplog.text and str(last) in caplog.text
    assert summary["steps"] == 12  # resumed from epoch 1 (last.prev.pt), trained epochs 2 and 3
    explicit = compose_cfg([*TINY, f"trainer.resume={tmp_path / 'nope.pt'}"])
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        train(explicit, tmp_path / "other")


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/densenet_exp_pwned"


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)
    cfg = compose_cfg([*TINY, f"model.pretrained={path}"])
    with pytest.raises(RuntimeError, match=r"cannot load .* safely"):
        train(cfg, tmp_path / "run")
    assert not os.path.exists(MARKER)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["data.batch_size=64"], DataError, "data.batch_size=64 is larger than the training set"),
        (["data=imagefolder", "data.root=/nonexistent/photos"], DataError, "does not exist"),
        (["data.image_size=2", "model.block_config=[2,2,2]"], DataError, "smaller than the model"),
        (["model.num_classes=7"], ValueError, "model.num_classes=7 but the data has 3 classes"),
        (["dist.nproc_per_node=0"], ValueError, "dist.nproc_per_node must be >= 1"),
    ],
)
def test_bad_settings_fail_before_training_with_a_clear_message(tmp_path, extra, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(compose_cfg([*TINY, *extra]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unwritable_output_directory_fails_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="is not writable"):
        train(compose_cfg(TINY), blocker / "run")


def test_the_write_probe_of_nodes_starting_together_cannot_collide(tmp_path):
    """Every node of a job probes the run folder at once; a shared probe name raced (one
    node's unlink removed another's file) in ~5% of tries between processes."""
    import threading

    from densenet_exp import _check_writable

    errors = []

    def probe():
        for _ in range(1000):
            try:
                _check_writable(tmp_path)
            except PermissionError as e:
                errors.append(e)

    threads = [threading.Thread(target=probe) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and list(tmp_path.iterdir()) == []


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"dist\.nproc_per_node=4 but only 2 GPU"):
        du.nproc_per_node({"nproc_per_node": "4"}, torch.device("cuda"))
    assert du.nproc_per_node({"nproc_per_node": "auto"}, torch.device("cuda")) == 2
