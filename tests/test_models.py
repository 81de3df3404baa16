import copy

import pytest
import torch
import torchvision
from conftest import assert_as_accurate, compose_cfg, grad_error
from torch import nn

from densenet_exp.models import (
    build_model,
    count_parameters,
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    densenet_bc,
    load_pretrained,
)
from densenet_exp.models.fast import DenseNet, slicing  # what trains by default (impl=fast)
from densenet_exp.models.layers import DSConv
from densenet_exp.models.sync_batchnorm import SyncBatchNorm
from densenet_exp.process import configure_compiler


@pytest.mark.parametrize(
    "factory, expected",
    [
        (densenet121, 7_978_856),
        (densenet161, 28_681_000),
        (densenet169, 14_149_480),
        (densenet201, 20_013_928),
    ],
)
def test_imagenet_densenets_have_torchvisions_parameter_counts(factory, expected):
    assert count_parameters(factory()) == expected


def test_densenet_bc100_has_the_papers_parameter_count():
    model = densenet_bc(depth=100, growth_rate=12, num_classes=10)
    assert count_parameters(model) == 769_162
    assert isinstance(model.features.conv0, nn.Conv2d) and model.features.conv0.kernel_size == (
        3,
        3,
    )


def test_torchvision_densenet121_weights_load_and_give_the_same_outputs():
    ours, theirs = densenet121(), torchvision.models.densenet121()
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # fp32 rounding only: our transitions pool before their 1x1 conv (the same function)
        torch.testing.assert_close(ours(x), theirs(x))


def test_pretrained_file_loads_old_key_names_and_replaces_a_different_classifier(tmp_path):
    tv = torchvision.models.densenet121()
    state = tv.state_dict()
    # torchvision's pre-0.3 naming: denselayer1.norm.1.weight instead of denselayer1.norm1.weight
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items()}
    assert any("norm.1." in k for k in old)
    path = tmp_path / "tv121.pth"
    torch.save(old, path)
    cfg = compose_cfg(["model=densenet121", f"model.pretrained={path}"])
    model = build_model(cfg, num_classes=7)
    assert model.classifier.out_features == 7
    w = model.features.denseblock1.denselayer1.norm1.weight
    torch.testing.assert_close(w, state["features.denseblock1.denselayer1.norm1.weight"])


def test_pretrained_from_another_architecture_names_the_mismatched_keys(tmp_path):
    path = tmp_path / "bc.pth"
    torch.save(densenet_bc(40).state_dict(), path)
    with pytest.raises(RuntimeError, match="does not match this architecture"):
        load_pretrained(densenet121(), path)


def test_dsconv_replaces_the_3x3_conv_by_depthwise_bn_pointwise():
    model = densenet121(conv={"type": "dsconv", "dilation": 2})
    conv2 = model.features.denseblock1.denselayer1.conv2
    assert isinstance(conv2, DSConv)
    assert conv2.depthwise.groups == conv2.depthwise.in_channels == 128
    assert conv2.depthwise.dilation == (2, 2) and conv2.depthwise.padding == (2, 2)
    assert isinstance(conv2.bn, nn.BatchNorm2d)
    assert conv2.pointwise.kernel_size == (1, 1)
    assert model.features.denseblock1.denselayer1.conv1.kernel_size == (1, 1)
    no_bn = densenet121(conv={"type": "dsconv", "inner_bn": False})
    assert not hasattr(no_bn.features.denseblock1.denselayer1.conv2, "bn")


def test_prelu_slopes_are_one_module_per_position_not_shared():
    model = densenet_bc(40, act={"name": "prelu", "prelu_init": 0.1})
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == len({id(m.weight) for m in prelus}) > 10
    assert all(m.weight.detach()[0].item() == pytest.approx(0.1) for m in prelus)
    per_channel = densenet_bc(40, act={"name": "prelu", "prelu_per_channel": True})
    layer = per_channel.features.denseblock1.denselayer1
    assert layer.act1.weight.numel() == layer.norm1.num_features


def _tiny(**kw) -> DenseNet:
    torch.manual_seed(0)
    kw.setdefault("stem", "cifar")
    return DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3, **kw)


def _one_step(model: nn.Module) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("conv", ["standard", "dsconv"])
@pytest.mark.parametrize("act", ["relu", "swish", "prelu", "gelu", "mish"])
def test_every_conv_and_activation_trains_a_step_with_finite_loss(conv, act):
    model = _tiny(conv={"type": conv}, act={"name": act})
    assert torch.isfinite(torch.tensor(_one_step(model)))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal", "default"])
def test_every_init_reaches_the_depthwise_convs_and_trains(init):
    torch.manual_seed(0)
    a = DenseNet(
        4, (2, 2), 8, num_classes=3, stem="cifar", conv={"type": "dsconv"}, init={"name": init}
    )
    torch.manual_seed(1)
    b = DenseNet(
        4, (2, 2), 8, num_classes=3, stem="cifar", conv={"type": "dsconv"}, init={"name": init}
    )
    dw = a.features.denseblock1.denselayer1.conv2.depthwise.weight
    assert dw.std() > 0
    if init == "orthogonal":  # rows of an orthogonal init are orthonormal up to the gain
        flat = a.features.denseblock1.denselayer1.conv1.weight.detach().flatten(1)
        gram = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
        torch.testing.assert_close(gram / gram[0, 0], torch.eye(len(gram)), atol=1e-4, rtol=0)
    assert not torch.equal(dw, b.features.denseblock1.denselayer1.conv2.depthwise.weight)
    bn = a.features.denseblock1.denselayer1.conv2.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(a.classifier.bias == 0)
    assert torch.isfinite(torch.tensor(_one_step(a)))


def test_kaiming_fan_out_gives_the_expected_spread():
    model = densenet121(init={"name": "kaiming", "mode": "fan_out"})
    w = model.features.denseblock3.denselayer1.conv2.weight  # 32 x 128 x 3 x 3
    expected = (2.0 / (32 * 9)) ** 0.5
    assert w.std().item() == pytest.approx(expected, rel=0.05)


@pytest.fixture(params=[False, True], ids=["whole-batch", "sliced"])
def sliced(request, monkeypatch) -> bool:
    """Run the memory-efficient backward (and forward) per sample instead of per batch."""
    if request.param:
        monkeypatch.setattr(slicing, "SLICE_ELEMENTS", 1)
    return request.param


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"conv": {"type": "dsconv"}, "act": {"name": "swish"}},
        {"act": {"name": "prelu", "prelu_per_channel": True}},
        {"conv": {"type": "dsconv", "inner_bn": False}, "act": {"name": "mish"}},
        {"stem": "imagenet"},  # the fused BN-act-pool stem, hand-written ReLU backward
        {"stem": "imagenet", "act": {"name": "prelu"}},  # ... and its autograd path
    ],
)
def test_memory_efficient_gives_the_same_outputs_gradients_and_running_stats(options, sliced):
    plain, lean = _tiny(**options), _tiny(memory_efficient=True, **options)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    out_a, out_b = plain(x), lean(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for (name, ba), bb in zip(plain.named_buffers(), lean.buffers()):
        torch.testing.assert_close(ba, bb, msg=name)  # recompute must not update BN stats twice


def test_compiled_memory_efficient_layers_trace_without_graph_breaks():
    # PReLU and the ImageNet stem: the backward passes that call torch.autograd.grad
    from torch._dynamo.utils import counters

    options = {"stem": "imagenet", "act": {"name": "prelu"}}
    plain, lean = _tiny(**options), _tiny(memory_efficient=True, **options)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    counters.clear()
    configure_compiler()  # as a rank's start-up does with trainer.compile=true
    # Graph breaks are dynamo's (the tracer's), whatever backend compiles the graphs; aot_eager
    # still traces forward and backward through AOTAutograd but skips Inductor's code generation
    # (minutes on 2 cores). test_train compiles through the engine with Inductor once.
    out_a, out_b = plain(x), torch.compile(lean, backend="aot_eager")(x)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    assert counters["stats"]["unique_graphs"] >= 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(out_a, out_b)
    for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_memory_efficient_with_synchronized_bn_recomputes_the_bottleneck(compiled):
    # SyncBN layers take the checkpointed path (their collectives run again in backward); with no
    # process group they normalise like BatchNorm, so the plain model is the reference
    plain = SyncBatchNorm.convert(_tiny())
    lean = SyncBatchNorm.convert(_tiny(memory_efficient=True))
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    out_a = plain(x)
    out_b = (torch.compile(lean, backend="aot_eager") if compiled else lean)(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for (name, ba), bb in zip(plain.named_buffers(), lean.buffers()):
        torch.testing.assert_close(ba, bb, msg=name)  # recompute must not update BN stats twice


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("act", ["relu", "swish"])  # hand-written and autograd ME backward
@pytest.mark.parametrize("pool", [nn.AvgPool2d(2, 2), nn.MaxPool2d(2, 2)])  # commutes or not
def test_transition_equals_bn_act_conv_then_pool(pool, act, memory_efficient, sliced):
    """Transitions pool before their 1x1 conv only where that is the same function."""
    from densenet_exp.models.fast.densenet import _Transition
    from densenet_exp.models.layers import act_factory

    torch.manual_seed(0)
    t = _Transition(12, 6, act_factory(name=act), memory_efficient=memory_efficient)
    t.pool = pool
    ref = copy.deepcopy(t)
    x = torch.randn(4, 12, 7, 7)  # odd size: the pool drops the last row and column
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = t(xa)
    expected = ref.pool(ref.conv(ref.act(ref.norm(xb))))
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for (name, a), b in zip(t.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    torch.testing.assert_close(t.norm.running_var, ref.norm.running_var)


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("options", [{}, {"conv": {"type": "dsconv"}, "act": {"name": "prelu"}}])
def test_channels_last_gives_the_same_outputs_and_gradients(options, memory_efficient, sliced):
    a = _tiny(memory_efficient=memory_efficient, **options)
    b = _tiny(memory_efficient=memory_efficient, **options)
    b.load_state_dict(a.state_dict())
    b.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8)
    out_a, out_b = a(x), b(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    out_a.sum().backward()
    out_b.sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4)


def test_build_model_rejects_a_class_count_that_disagrees_with_the_data():
    cfg = compose_cfg(["model.num_classes=5"])
    with pytest.raises(ValueError, match=r"model\.num_classes=5 but the data has 10 classes"):
        build_model(cfg, num_classes=10)
    assert build_model(cfg, num_classes=5).classifier.out_features == 5


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])  # imagenet: the fused BN-act-pool stem
@pytest.mark.parametrize("act", ["relu", "prelu"])  # hand-written and autograd backward
@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_memory_efficient_matches_under_low_precision(level, act, stem, sliced):
    """bf16 gradients with memory_efficient are as accurate as without, measured against fp64.

    The two round at different places (the memory-efficient layer stores its normalised
    bottleneck output in bf16 and applies the affine after), so under O3, where BN runs in bf16
    too, they differ by rounding noise: on this tiny model one seed's total error ratio ranges
    0.5-1.7 either way, with a mean of 1.0. Summed over four seeds it is stable; a wrong gradient
    is off by far more.
    """
    from test_precision import amp

    from densenet_exp.precision import Precision

    errors = torch.zeros(2, dtype=torch.float64)
    for seed in range(4):
        torch.manual_seed(seed)
        x = torch.randn(4, 3, 8, 8)
        exact = _tiny(act={"name": act}, stem=stem).double()
        exact(x.double()).square().sum().backward()
        for i, me in enumerate((False, True)):
            model = _tiny(memory_efficient=me, act={"name": act}, stem=stem)
            policy = Precision(amp(level, dtype="bfloat16"), torch.device("cpu"))
            policy.prepare(model, None)
            with policy.autocast():
                model(policy.cast_input(x)).float().square().sum().backward()
            assert model.classifier.weight.grad.dtype == model.classifier.weight.dtype
            errors[i] += grad_error(model, exact)
    assert errors[1] <= 1.3 * errors[0], errors.tolist()


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average of batch stats
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_training_matches_torchvisions_densenet_step_for_step(memory_efficient, momentum):
    """Per-feature BN statistics (computed once, shared by every reader) are exactly BN."""
    torch.manual_seed(0)
    theirs = torchvision.models.DenseNet(8, (3, 3), 16, num_classes=5)
    ours = DenseNet(8, (3, 3), 16, num_classes=5, memory_efficient=memory_efficient)
    ours.load_state_dict(theirs.state_dict())
    for bn in [m for model in (theirs, ours) for m in model.modules()]:
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = momentum
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (theirs, ours)]
    for _ in range(3):
        x = torch.randn(6, 3, 32, 32)
        outs = [m(x) for m in (theirs, ours)]
        torch.testing.assert_close(outs[1], outs[0])
        for out in outs:
            out.square().mean().backward()
        for (name, a), b in zip(theirs.named_parameters(), ours.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(theirs.named_buffers(), ours.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # running stats


def test_training_is_as_accurate_as_torchvision_under_bf16_autocast():
    """bf16 gradients differ from torchvision's by rounding only: both are measured against fp64.

    (bf16 rounding alone puts 10-30% relative error on this tiny model's early gradients, and our
    transitions round at another place, pooling before their 1x1 conv, so the two bf16 runs are
    compared through their distance to the exact gradients, not to each other.)
    """
    torch.manual_seed(0)
    theirs = torchvision.models.DenseNet(4, (2, 2), 8, num_classes=3)
    ours = DenseNet(4, (2, 2), 8, num_classes=3, memory_efficient=True)
    ours.load_state_dict(theirs.state_dict())
    exact = copy.deepcopy(theirs).double()
    x = torch.randn(4, 3, 32, 32)
    for model in (theirs, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
    exact(x.double()).square().sum().backward()
    for a, b in zip(theirs.parameters(), ours.parameters()):
        assert b.grad.dtype == a.grad.dtype == torch.float32
    assert_as_accurate(ours, theirs, exact)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps between forward and backward (each storage counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.sum().backward()
    return sum(storages.values())


def test_memory_efficient_keeps_a_fraction_of_the_activations():
    x = torch.randn(8, 3, 64, 64)
    ours = {
        me: _saved_bytes(DenseNet(8, (4, 4, 4), 16, num_classes=3, memory_efficient=me), x)
        for me in (False, True)
    }
    tv_lean = _saved_bytes(
        torchvision.models.DenseNet(8, (4, 4, 4), 16, num_classes=3, memory_efficient=True), x
    )
    # plain keeps every concatenation and BN output; lean keeps each feature map once, the
    # bottleneck outputs and conv0's output (torchvision's lean mode: 0.74x its plain mode)
    assert ours[True] < 0.4 * ours[False], ours
    assert ours[True] < 0.6 * tv_lean, (ours, tv_lean)
