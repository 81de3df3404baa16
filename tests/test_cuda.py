"""CUDA-only checks (fp16 levels, native SyncBN with NCCL, memory-efficient mode). Skipped on CPU;
run by benchmarks/gpu_check.sh on a GPU machine."""

import copy
import os

import pytest
import torch
from conftest import TINY, assert_as_accurate, compose_cfg, free_port
from test_precision import amp, train_steps
from test_streamed import FOLDER, photos  # noqa: F401 - the fixture
from torch import nn
from torch.utils.data import DataLoader

from densenet_exp import train
from densenet_exp.config import to_typed
from densenet_exp.data import build_datasets
from densenet_exp.data.streamed import DeviceDecoder
from densenet_exp.models import densenet121
from densenet_exp.models.fast import DenseNet  # what trains by default
from densenet_exp.models.sync_batchnorm import convert_sync_batchnorm
from densenet_exp.precision import Precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def tiny():
    torch.manual_seed(0)
    return DenseNet(8, (2, 2), 16, num_classes=3, stem="cifar").to(CUDA)


@pytest.mark.parametrize(
    "level, conv_dtype, bn_dtype, scaled",
    [
        ("O1", torch.float32, torch.float32, True),
        ("O2", torch.float16, torch.float32, True),
        ("O3", torch.float16, torch.float16, False),
    ],
)
def test_fp16_levels_on_cuda_have_their_dtypes_scaling_and_learn(
    level, conv_dtype, bn_dtype, scaled
):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    policy = Precision(amp(level), CUDA)
    policy.prepare(model, opt)
    assert policy.spec.dtype == torch.float16
    layer = model.features.denseblock1.denselayer1
    assert layer.conv1.weight.dtype == conv_dtype and layer.norm1.weight.dtype == bn_dtype
    assert (policy.scaler is not None) == scaled
    torch.manual_seed(1)
    # the same small memorisation task as the CPU test of each level (16 images of 8x8)
    x, y = torch.randn(16, 3, 8, 8, device=CUDA), torch.arange(16, device=CUDA) % 3
    losses = train_steps(model, opt, policy, 20, x, y)
    assert losses[-1] < 0.8 * losses[0], losses
    if scaled:
        assert policy.loss_scale >= 2.0**15


def test_cuda_overflow_is_skipped_and_the_scale_halves():
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = Precision(amp("O2"), CUDA)
    policy.prepare(model, opt)
    x, y = torch.randn(8, 3, 16, 16, device=CUDA), torch.arange(8, device=CUDA) % 3
    before = model.classifier.weight.detach().clone()
    with policy.autocast():
        loss = nn.functional.cross_entropy(model(policy.cast_input(x)).float(), y)
    policy.backward(loss)
    model.classifier.weight.grad.view(-1)[0] = float("inf")
    policy.step(opt)
    assert policy.loss_scale == 2.0**15 and policy.skipped_steps == 1
    assert torch.equal(model.classifier.weight, before)


def test_native_syncbn_with_nccl_at_world_size_one_trains_like_plain_bn():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        plain, synced = tiny(), tiny()
        synced = convert_sync_batchnorm(synced, CUDA)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[0])
        x, y = torch.randn(16, 3, 16, 16, device=CUDA), torch.arange(16, device=CUDA) % 3
        for model in (plain, ddp):
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            policy = Precision(amp("O1"), CUDA)
            train_steps(model, opt, policy, 3, x, y)
        for a, b in zip(plain.state_dict().values(), synced.state_dict().values()):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=2e-3)
    finally:
        dist.destroy_process_group()


def test_memory_efficient_on_cuda_matches_and_uses_less_memory():
    def peak(me):
        torch.manual_seed(0)
        model = densenet121(memory_efficient=me, num_classes=10).to(CUDA)
        x = torch.randn(32, 3, 128, 128, device=CUDA)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = model(x)
        out.square().sum().backward()
        torch.cuda.synchronize()
        grads = [p.grad.clone() for p in model.parameters()]
        return out.detach(), grads, torch.cuda.max_memory_allocated() - base

    torch.backends.cudnn.deterministic = True
    out_a, grads_a, mem_a = peak(False)
    out_b, grads_b, mem_b = peak(True)
    torch.testing.assert_close(out_a, out_b, atol=1e-4, rtol=1e-4)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=1e-3, rtol=1e-3)
    assert mem_b < 0.7 * mem_a, (mem_a / 2**20, mem_b / 2**20)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_shared_bn_statistics_match_torchvision_on_cuda_in_fp16(memory_efficient, channels_last):
    """The per-feature normalisation and the hand-written backward with half activations."""
    import torchvision

    torch.manual_seed(0)
    theirs = torchvision.models.DenseNet(8, (3, 3), 16, num_classes=5).to(CUDA)
    ours = DenseNet(8, (3, 3), 16, num_classes=5, memory_efficient=memory_efficient).to(CUDA)
    ours.load_state_dict(theirs.state_dict())
    exact = copy.deepcopy(theirs).double()
    x = torch.randn(8, 3, 64, 64, device=CUDA)
    if channels_last:
        for m in (theirs, ours):
            m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for model in (theirs, ours):
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
        assert out.dtype == torch.float16
        out.float().square().mean().backward()
        outs.append(out.double())
    exact_out = exact(x.double())
    exact_out.square().mean().backward()
    ours_err, their_err = ((o - exact_out).norm() for o in (outs[1], outs[0]))
    assert ours_err <= 1.5 * their_err + 1e-4 * exact_out.norm()
    assert_as_accurate(ours, theirs, exact)
    for (name, a), b in zip(theirs.named_buffers(), ours.buffers()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_training_runs_end_to_end_on_cuda(tmp_path, level):
    cfg = compose_cfg(
        [
            *TINY,
            "trainer.device=cuda",
            f"amp={level}",
            "trainer.channels_last=true",
            "model.memory_efficient=true",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["peak_mem_mb"] > 0
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
    )
    assert state["precision"]["opt_level"] == level


def test_jpegs_decode_on_the_gpu_close_to_pil_and_train(photos, tmp_path):  # noqa: F811
    gpu = [*FOLDER, f"data.root={photos}", "data.cache=none", "data.decode=gpu"]
    split = build_datasets(to_typed(compose_cfg(gpu)).data).val
    loader = DataLoader(split, batch_size=5, collate_fn=split.collate)
    on_cpu, on_gpu = DeviceDecoder(split, "cpu"), DeviceDecoder(split, CUDA)
    for batch in loader:
        a, b = on_cpu(batch), on_gpu(batch)
        assert b[0].device.type == "cuda" and torch.equal(a[2], b[2])
        diff = (a[0].int() - b[0].cpu().int()).abs()
        # nvJPEG's IDCT and chroma upsampling are not libjpeg's: a few levels of 255
        assert diff.float().mean() < 4, diff.float().mean()
    cfg = compose_cfg(
        [
            *[o for o in TINY if not o.startswith("data.")],
            *gpu,
            "trainer.device=cuda",
            "amp=O1",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 3


def test_slots_give_each_sweep_job_its_own_gpu_or_pack_them_on_one(tmp_path):
    """Under hydra/launcher=slots each job sees only its slot's GPU (cuda:0 inside the job);
    jobs_per_gpu=2 runs two jobs on one GPU at once. The parent never initialises CUDA."""
    import json
    import subprocess

    from conftest import PYTHON, ROOT

    gpus = torch.cuda.device_count()
    for name, extra in (("spread", []), ("packed", ["hydra.launcher.devices=[0]",
                                                    "hydra.launcher.jobs_per_gpu=2"])):  # fmt: skip
        out = tmp_path / name
        cmd = [PYTHON, "-m", "densenet_exp", "-m", *TINY, "trainer.device=cuda", "act=relu,swish"]
        cmd += ["hydra/launcher=slots", f"hydra.sweep.dir={out}", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(x) for x in (out / "slots.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(len(r["devices"]) == 1 for r in rows)
        if name == "packed":
            assert [r["devices"] for r in rows] == [["0"], ["0"]]
        elif gpus > 1:
            assert rows[0]["devices"] != rows[1]["devices"]
