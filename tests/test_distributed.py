"""Multi-process tests on CPU with gloo: spawned ranks, the elastic launcher, two loopback nodes."""

import json
import subprocess
import time

import _dist_workers as w
import pytest
import torch
import torch.multiprocessing as mp
from conftest import PYTHON, ROOT, TINY, compose_cfg, free_port
from omegaconf import OmegaConf
from torch import nn

from densenet_exp import distributed as du

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """The folder where two ranks spawned once wrote what every check below reads."""
    out = tmp_path_factory.mktemp("spawned")
    mp.spawn(w.all_checks, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def test_portable_syncbn_matches_batchnorm_on_the_concatenated_batch(spawned, tmp_path):
    r0, r1 = (torch.load(spawned / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    bn = nn.BatchNorm2d(5).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x.requires_grad_(True)
    y = bn(x)
    (y * g).sum().backward()
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach())
    torch.testing.assert_close(torch.cat([r0["dx"], r1["dx"]]), x.grad)
    torch.testing.assert_close(r0["dw"], bn.weight.grad)
    torch.testing.assert_close(r0["db"], bn.bias.grad)
    torch.testing.assert_close(r0["rm"], bn.running_mean)
    torch.testing.assert_close(r0["rv"], bn.running_var)


def test_two_ranks_with_syncbn_equal_one_process_on_the_double_batch(spawned, tmp_path):
    ddp_state = torch.load(spawned / "ddp.pt", weights_only=True)
    single = w.tiny_model()
    w.train_steps(single, rank=0, world=1)
    for key, value in single.state_dict().items():
        diff = (ddp_state[key].double() - value.double()).abs().max().item()
        assert diff < 1e-5, (key, diff)


def test_cleanup_waits_for_the_last_rank_before_leaving_the_group(spawned, tmp_path):
    arrived = torch.load(spawned / "arrived.pt", weights_only=True)
    left = torch.load(spawned / "left1.pt", weights_only=True)
    assert left >= arrived


def test_distributed_evaluation_of_an_odd_val_set_equals_single_process(spawned, tmp_path):
    dist_metrics = torch.load(spawned / "eval.pt", weights_only=True)
    from densenet_exp import val_predictions
    from densenet_exp.data import DeviceBatches, Indexed
    from densenet_exp.data.synthetic import SyntheticDataset
    from densenet_exp.engine import evaluate
    from densenet_exp.precision import Precision

    ds = SyntheticDataset(13, 3, 8, seed=2)
    loader = torch.utils.data.DataLoader(Indexed(ds), batch_size=4)
    amp = OmegaConf.to_container(compose_cfg().amp, enum_to_str=True)
    sink = val_predictions.PredictionSink()
    cpu = torch.device("cpu")
    single = evaluate(w.tiny_model(), DeviceBatches(loader, cpu), Precision(amp, cpu), False, sink)
    single_file = tmp_path / "single.csv"
    val_predictions.write(single_file, sink.gather(), val_predictions.image_names(ds), ds.classes)
    # per-image predictions: the same file, byte for byte, from 1 rank and from 2
    two_ranks = (spawned / "val_predictions.csv").read_text()
    assert two_ranks == single_file.read_text()
    rows = val_predictions.read(single_file)
    assert [int(r["index"]) for r in rows] == list(range(13))
    assert sum(int(r["correct"]) for r in rows) / 13 == pytest.approx(single["val_top1"])
    assert dist_metrics["val_top1"] == single["val_top1"]
    assert dist_metrics["val_top5"] == single["val_top5"]
    # per-sample losses are float32 sums in a different batching: equal to rounding
    assert dist_metrics["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)


# Two ranks from the command line, in one run directory: test_train's CLI test.


def test_two_nodes_on_loopback_form_one_world_and_train(tmp_path):
    port = free_port()
    overrides = [
        *TINY,
        "dist.nnodes=2",
        "dist.nproc_per_node=1",
        f"dist.rdzv_endpoint=127.0.0.1:{port}",
        "dist.rdzv_id=loopback",
        "dist.timeout_s=60",
    ]
    # each node calls train() and prints what it returns: the objective Hydra hands Optuna
    driver = (
        "import sys; sys.path.insert(0, 'tests'); import _dist_workers; _dist_workers.node_main()"
    )
    nodes = [
        subprocess.Popen(
            [PYTHON, "-c", driver, str(tmp_path / f"node{i}"), *overrides],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    summaries = [
        json.loads((tmp_path / f"node{i}" / "metrics.json").read_text())
        for i in range(2)
        if (tmp_path / f"node{i}" / "metrics.json").exists()
    ]
    assert len(summaries) == 1  # only global rank 0 writes
    assert summaries[0]["world_size"] == 2 and summaries[0]["status"] == "completed"
    # both nodes return global rank 0's summary, whichever node holds it
    returned = [json.loads(o.split("RESULT ", 1)[1].splitlines()[0]) for o in outputs]
    assert returned[0] == returned[1]
    assert returned[0]["best_val_top1"] == summaries[0]["best_val_top1"]


def test_a_rank_that_raises_fails_the_job_fast_with_its_error_in_the_log(tmp_path):
    cfg = OmegaConf.to_container(
        compose_cfg([*TINY, "dist.timeout_s=120"]), resolve=True, enum_to_str=True
    )
    run = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(du.RankFailedError, match=r"rank 1 failed: .*injected failure in rank 1"):
        du.launch(w.failing_rank, (cfg, str(run)), cfg["dist"], 2, torch.device("cpu"))
    # far below the collective timeout, however loaded the machine (it took ~4 s on 2 cores)
    assert time.monotonic() - start < cfg["dist"]["timeout_s"] / 2
    log = (run / "train.log").read_text()
    assert "[rank 1] training failed on rank 1: ValueError: injected failure in rank 1" in log


def test_slurm_rendezvous_uses_the_first_node_and_the_job_id(monkeypatch):
    assert du.expand_nodelist("gpu[01-03,7],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu7", "cpu5"]
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[08-09]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = {"rdzv_endpoint": "slurm:29555", "rdzv_id": "exp"}
    assert du.rendezvous(cfg) == ("node08:29555", "exp-4242")
    assert du.rendezvous({"rdzv_endpoint": "host:1", "rdzv_id": "x"}) == ("host:1", "x")
    # no port: one from the job id, so the jobs of an array that share a first node never share it
    ports = set()
    for job in ("4242", "4243"):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        ports.add(du.rendezvous({"rdzv_endpoint": "slurm", "rdzv_id": "exp"})[0])
    assert ports == {"node08:24242", "node08:24243"}
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    with pytest.raises(ValueError, match="outside a SLURM job"):
        du.rendezvous(cfg)


def test_torchrun_recipe_trains_two_ranks_in_one_directory(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "--no-python",
            "launch/rank.sh",
            *TINY,
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHON": PYTHON},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra",
        "checkpoints",
        "metrics.json",
        "metrics.jsonl",
        "tb",
        "train.log",
        "val_predictions.best.csv",
        "val_predictions.csv",
    ]


def test_memory_efficient_layers_train_identically_under_ddp(spawned, tmp_path):
    states = torch.load(spawned / "me.pt", weights_only=True)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, msg=key)


def test_a_failed_job_is_reported_by_the_first_line_of_the_rank_s_own_error():
    from types import SimpleNamespace

    def failure(message, exitcode=1, timestamp=0):
        return SimpleNamespace(
            message=message, exitcode=exitcode, timestamp=timestamp, signal_name=lambda: "SIGKILL"
        )

    recorded = {
        "message": "InternalTorchDynamoError: checkpoint not implemented\n\nfrom user code:\n"
        "  File ...\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace"
    }
    knock_on = "Traceback (most recent call last):\n  ...\nRuntimeError: Connection closed by peer"
    text = du._describe_failures({0: failure(knock_on), 1: failure(recorded, timestamp=5)})
    # rank 1's own error leads although rank 0 failed first; each by its telling line
    assert text == (
        "rank 1 failed: InternalTorchDynamoError: checkpoint not implemented; "
        "then rank 0: RuntimeError: Connection closed by peer"
    )
    # a rank that gave up because rank 0 could not write the disk cache comes after rank 0,
    # even when it stopped first
    waiting = {
        "message": "DataError: rank 1 cannot read the decoded cache x.u8: rank 0 failed "
        "to write it (its error is in the log)"
    }
    text = du._describe_failures(
        {1: failure(waiting, timestamp=1), 0: failure({"message": "DataError: bad"}, timestamp=2)}
    )
    assert text.startswith("rank 0 failed: DataError: bad; then rank 1: DataError: rank 1 cannot")
    assert du._describe_failures({0: failure("", exitcode=-9)}) == (
        "rank 0 failed: killed by signal 9 (SIGKILL)"
    )
