"""A researcher's own conv, activation and norm, from their own folder, without editing the
package."""

import csv
import json
import subprocess
import textwrap

import pytest
import torch
from conftest import PYTHON, TINY, compose_cfg

from densenet_exp.models import DenseNet, build_model
from densenet_exp.models.layers import make_act

MODULE = '''
import torch
from torch import nn


class GhostConv(nn.Module):
    """Half the maps from a 3x3 conv, the rest from a depthwise 3x3 on those (GhostNet's idea)."""

    def __init__(self, in_channels, out_channels, ratio=2):
        super().__init__()
        primary = out_channels // ratio
        self.primary = nn.Conv2d(in_channels, primary, 3, padding=1, bias=False)
        self.cheap = nn.Conv2d(
            primary, out_channels - primary, 3, padding=1, groups=primary, bias=False
        )

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)


class Squareplus(nn.Module):
    def __init__(self, b=4.0):
        super().__init__()
        self.b = b

    def forward(self, x):
        return 0.5 * (x + torch.sqrt(x * x + self.b))


class ChannelScale(nn.Module):
    def __init__(self, num_channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_channels, 1, 1))

    def forward(self, x):
        return torch.relu(x) * self.scale


class ChannelRMSNorm(nn.Module):
    """Each pixel's channel vector divided by its RMS, times a learned per-channel gain."""

    def __init__(self, num_features, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, 1, 1))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps) * self.weight
'''


@pytest.fixture
def own_folder(tmp_path, monkeypatch):
    (tmp_path / "my_ideas.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "confs" / "conv").mkdir(parents=True)
    (tmp_path / "confs" / "act").mkdir()
    (tmp_path / "confs" / "norm").mkdir()
    (tmp_path / "confs" / "norm" / "rms.yaml").write_text(
        "type: custom\n_target_: my_ideas.ChannelRMSNorm\nparams:\n  eps: 1.0e-6\n"
    )
    (tmp_path / "confs" / "conv" / "ghost.yaml").write_text(
        "type: custom\n_target_: my_ideas.GhostConv\nparams:\n  ratio: 2\n"
    )
    (tmp_path / "confs" / "act" / "squareplus.yaml").write_text(
        "name: custom\n_target_: my_ideas.Squareplus\nparams:\n  b: 4.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_your_own_conv_activation_and_norm_train_in_a_sweep_and_show_in_its_summary(own_folder):
    sweep = own_folder / "sweep"
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "densenet_exp",
            "-m",
            "--config-dir",
            "confs",
            *TINY,
            "model.impl=fast",  # asked for: the jobs with your modules say they run plain
            "conv=standard,ghost",
            "act=relu,squareplus",
            "norm=batch,rms",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=own_folder,  # where my_ideas.py is importable from, as for a user
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        (r["conv"], r["act"], r["norm"]): r for r in csv.DictReader((sweep / "summary.csv").open())
    }
    assert set(rows) == {
        (c, a, n)
        for c in ("standard", "ghost")
        for a in ("relu", "squareplus")
        for n in ("batch", "rms")
    }
    assert {r["status"] for r in rows.values()} == {"ok"}
    # GhostConv has fewer parameters than the 3x3 conv it replaces
    ghost, standard = rows["ghost", "relu", "batch"], rows["standard", "relu", "batch"]
    assert int(ghost["params"]) < int(standard["params"])
    # the RMS norm has a gain and no bias: one parameter per channel fewer than BatchNorm's two
    assert int(rows["standard", "relu", "rms"]["params"]) < int(standard["params"])
    configs = [r["configuration"] for r in csv.DictReader((sweep / "summary_by_config.csv").open())]
    assert "conv=ghost,act=squareplus,norm=batch" in configs
    assert "conv=ghost,act=squareplus,norm=rms" in configs
    compared = {r["configuration"] for r in csv.DictReader((sweep / "compare.csv").open())}
    assert "conv=ghost,act=squareplus,norm=batch" in compared
    assert "conv=ghost,act=squareplus,norm=rms" in compared
    job = next(sweep.glob("*conv=ghost,act=squareplus,norm=batch*"))
    assert (
        "does not know my_ideas.GhostConv, my_ideas.Squareplus" in (job / "train.log").read_text()
    )
    assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
    job = next(sweep.glob("*conv=standard,act=relu,norm=rms*"))
    assert "does not know my_ideas.ChannelRMSNorm" in (job / "train.log").read_text()
    assert json.loads((job / "metrics.json").read_text())["status"] == "completed"


def test_your_own_modules_are_built_where_the_builtins_are_and_run_the_plain_way(own_folder):
    import my_ideas

    cfg = compose_cfg(
        [
            "conv.type=custom",
            "conv._target_=my_ideas.GhostConv",
            "act.name=custom",
            "act._target_=my_ideas.ChannelScale",
        ]
    )
    model = build_model(cfg, num_classes=4)
    assert type(model) is DenseNet  # impl=fast hands your modules to the plain network
    layer = model.features.denseblock1.denselayer1
    assert isinstance(layer.conv2, my_ideas.GhostConv)
    assert isinstance(layer.act1, my_ideas.ChannelScale)
    assert layer.act1.scale.shape[0] == layer.norm1.num_features  # num_channels was passed
    assert make_act(5, name="custom", _target_="my_ideas.Squareplus", params={"b": 1.0}).b == 1.0


def test_your_own_norm_is_every_norm_of_the_network_and_gets_the_channel_count(own_folder):
    import my_ideas

    own = ["norm.type=custom", "norm._target_=my_ideas.ChannelRMSNorm"]
    model = build_model(compose_cfg([*TINY, *own]), 4)
    assert type(model) is DenseNet  # the plain network: the fast kernels assume BatchNorm
    norms = [m for m in model.modules() if isinstance(m, my_ideas.ChannelRMSNorm)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # TINY's cifar stem has no norm0: two per bottleneck layer (4), the transition's, norm5
    assert len(norms) == 2 * 4 + 1 + 1
    assert model.features.norm5.weight.shape[0] == model.num_features  # num_features=C
    # a torch class that takes num_channels (GroupNorm) needs only its own parameters
    group_norm = ["norm.type=custom", "norm._target_=torch.nn.GroupNorm"]
    gn = build_model(compose_cfg([*TINY, *group_norm, "+norm.params.num_groups=2"]), 4)
    layer = gn.features.denseblock1.denselayer1
    assert isinstance(layer.norm1, torch.nn.GroupNorm) and layer.norm1.num_groups == 2
    assert layer.norm1.num_channels == 8  # TINY's model.num_init_features
    assert gn(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_custom_without_a_target_says_what_to_set():
    with pytest.raises(ValueError, match=r"conv\._target_"):
        build_model(compose_cfg(["conv.type=custom"]), num_classes=3)
