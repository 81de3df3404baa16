"""DenseNet, DenseNet-B, DenseNet-C, DenseNet-BC: the paper's Table 2 as the test."""

import copy

import pytest
import torch
from conftest import TINY, compose_cfg
from torch import nn

from densenet_exp import train
from densenet_exp.models import ArchitectureError, build_model, count_parameters
from densenet_exp.models.densenet import DenseNet, _BasicDenseLayer, _DenseLayer

# Huang et al. 2017, Table 2 (CIFAR, 10 classes), parameters in millions as printed
TABLE_2 = {
    "densenet40": 1.0,
    "densenet100_k12": 7.0,
    "densenet100_k24": 27.2,
    "densenet_bc100": 0.8,
    "densenet_bc250_k24": 15.3,
    "densenet_bc190_k40": 25.6,
}
VARIANTS = {  # (bottleneck, compression) of the four networks
    "DenseNet": (False, 1.0),
    "DenseNet-B": (True, 1.0),
    "DenseNet-C": (False, 0.5),
    "DenseNet-BC": (True, 0.5),
}
ACTS = ["relu", "swish", "prelu", "gelu", "mish"]


@pytest.mark.parametrize("preset, millions", TABLE_2.items())
def test_parameter_counts_are_the_papers_table_2(preset, millions):
    model = build_model(compose_cfg([f"model={preset}"]), num_classes=10)
    assert round(count_parameters(model) / 1e6, 1) == millions


def test_the_cifar_depth_rule_gives_the_layers_per_block():
    plain = build_model(compose_cfg(["model=densenet40"]), num_classes=10)
    blocks = [m for n, m in plain.features.named_children() if n.startswith("denseblock")]
    assert [len(b) for b in blocks] == [12, 12, 12]  # (40 - 4) / 3
    assert all(type(layer) is _BasicDenseLayer for b in blocks for layer in b.values())
    b = build_model(compose_cfg(["model=densenet40", "model.bottleneck=true"]), num_classes=10)
    blocks = [m for n, m in b.features.named_children() if n.startswith("denseblock")]
    assert [len(b) for b in blocks] == [6, 6, 6]  # (40 - 4) / 6
    assert all(isinstance(layer, _DenseLayer) for b in blocks for layer in b.values())


def tiny(bottleneck, compression, conv="standard", act="relu", memory_efficient=False):
    return DenseNet(
        growth_rate=4,
        block_config=(2, 2),
        num_init_features=8,
        num_classes=3,
        stem="cifar",
        bottleneck=bottleneck,
        compression=compression,
        memory_efficient=memory_efficient,
        conv={"type": conv},
        act={"name": act},
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("conv", ["standard", "dsconv"])
@pytest.mark.parametrize("act", ACTS)
def test_every_variant_trains_a_step_with_every_conv_and_activation(variant, conv, act):
    bottleneck, compression = VARIANTS[variant]
    torch.manual_seed(0)
    model = tiny(bottleneck, compression, conv, act)
    # C: the transition keeps int(12 * compression) of the block's 8 + 2 x 4 = 16 maps
    assert model.features.transition1.conv.out_channels == int(16 * compression)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("conv", ["standard", "dsconv"])
@pytest.mark.parametrize("act", ["relu", "prelu", "swish"])
@pytest.mark.parametrize("compression", [1.0, 0.5])
def test_memory_efficient_basic_layers_give_the_same_outputs_and_gradients(conv, act, compression):
    torch.manual_seed(1)
    plain = tiny(False, compression, conv, act).double()
    lean = copy.deepcopy(plain)
    for m in lean.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = True
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    out_plain, out_lean = plain(x), lean(x)
    torch.testing.assert_close(out_lean, out_plain)
    g = torch.randn_like(out_plain)
    (out_plain * g).sum().backward()
    (out_lean * g).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), lean.buffers()):
        torch.testing.assert_close(b, a, msg=name)  # running stats updated once, not twice


def test_basic_layers_train_with_memory_efficient_and_sync_bn_through_the_engine(tmp_path):
    summary = train(
        compose_cfg(
            [
                *TINY,
                "model.bottleneck=false",
                "model.compression=1.0",
                "model.memory_efficient=true",
            ]
        ),
        tmp_path / "run",
    )
    assert summary["status"] == "completed" and summary["params"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.bn_size=0"], "model.bn_size=0 must be an integer >= 1"),
        (["model.growth_rate=0"], "model.growth_rate=0 must be an integer >= 1"),
        (["model.num_init_features=-2"], "model.num_init_features=-2 must be an integer >= 1"),
        (["model.block_config=[]"], "model.block_config=[] must be a non-empty list"),
        (["model.block_config=[2,0]"], "model.block_config=[2, 0] must be a non-empty list"),
        (["model.drop_rate=1.0"], "model.drop_rate=1.0 must be in [0, 1)"),
        (["model.compression=0"], "model.compression=0.0 must be in (0, 1]"),
        (["model=densenet40", "model.depth=41", "model.block_config=null"], "model.depth=41 does"),
        # 43 = 4 + 3 x 13 makes basic blocks, but not bottleneck ones
        (["model=densenet_bc100", "model.depth=43", "model.block_config=null"], "4 + 6n"),
        (["model=densenet40"], "model.block_config=[2, 2] is set too: set one of them"),
    ],
)
def test_bad_model_keys_fail_before_training_naming_the_key(tmp_path, overrides, message):
    # an image folder that does not exist: the architecture is checked before the data
    cfg = compose_cfg([*TINY, "data=imagefolder", f"data.root={tmp_path / 'none'}", *overrides])
    with pytest.raises(ArchitectureError) as raised:
        train(cfg, tmp_path / "run")
    assert message in str(raised.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_ablation_bc_preset_sweeps_b_and_c_on_one_depth():
    cfg = compose_cfg(["experiment=ablation_bc"], hydra_config=True)
    assert cfg.model.name == "densenet40" and cfg.model.depth == 40
    params = cfg.hydra.sweeper.params
    assert params["model.bottleneck"] == "false,true"
    assert params["model.compression"] == "1.0,0.5"


# Basic layers under two ranks with synchronized BatchNorm, from the command line: test_train's
# CLI test trains exactly that.
