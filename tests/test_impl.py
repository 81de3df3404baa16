"""model.impl: the plain, paper-shaped network and the fast one are the same function."""

import copy
import logging

import pytest
import torch
from conftest import TINY, compose_cfg, grad_error
from omegaconf import OmegaConf

from densenet_exp import train
from densenet_exp.models import FastDenseNet, build_model, densenet121, densenet_bc
from densenet_exp.models import densenet as plain
from densenet_exp.models.densenet import DenseNet
from densenet_exp.precision import Precision

ACTS = ["relu", "swish", "prelu", "gelu", "mish"]
INITS = ["kaiming", "xavier", "orthogonal", "default"]


def pair(conv="standard", act="relu", memory_efficient=False, stem="cifar", init="kaiming", **kw):
    """A plain and a fast network with the same weights (the fast one is built from a copy)."""
    options = dict(
        growth_rate=4,
        block_config=(2, 2),
        num_init_features=8,
        num_classes=3,
        stem=stem,
        memory_efficient=memory_efficient,
        conv={"type": conv},
        act={"name": act},
        init={"name": init},
        **kw,
    )
    torch.manual_seed(0)
    slow = DenseNet(**options)
    fast = FastDenseNet(**options)
    fast.load_state_dict(slow.state_dict())
    return slow, fast


def step(model, x, g):
    out = model(x)
    (out * g).sum().backward()
    return out


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("conv", ["standard", "dsconv"])
@pytest.mark.parametrize("act", ACTS)
def test_fast_equals_plain_in_outputs_gradients_and_running_stats(conv, act, memory_efficient):
    slow, fast = (m.double() for m in pair(conv, act, memory_efficient))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    g = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(step(fast, x, g), step(slow, x, g))
    for (name, a), b in zip(slow.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(slow.named_buffers(), fast.buffers()):
        torch.testing.assert_close(b, a, msg=name)
    slow.eval(), fast.eval()
    torch.testing.assert_close(fast(x), slow(x))


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_fast_equals_plain_with_the_imagenet_stem_and_basic_layers(memory_efficient):
    for kw in ({"stem": "imagenet"}, {"bottleneck": False, "compression": 1.0}):
        slow, fast = (m.double() for m in pair(memory_efficient=memory_efficient, **kw))
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        g = torch.randn(2, 3, dtype=torch.float64)
        torch.testing.assert_close(step(fast, x, g), step(slow, x, g))
        for (name, a), b in zip(slow.named_parameters(), fast.parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("init", INITS)
def test_both_implementations_initialise_the_same_parameters_with_the_same_names(init):
    torch.manual_seed(3)
    slow = DenseNet(4, (2, 2), 8, num_classes=3, stem="cifar", init={"name": init})
    torch.manual_seed(3)
    fast = FastDenseNet(4, (2, 2), 8, num_classes=3, stem="cifar", init={"name": init})
    a, b = slow.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_fast_is_as_accurate_as_plain_at_every_amp_level(level, memory_efficient):
    """Both round, at different places: over four seeds, the fast gradients are no further
    from the fp64 ones than the plain model's (as one vector, relative)."""
    amp = OmegaConf.to_container(compose_cfg([f"amp={level}"]).amp, enum_to_str=True)
    errors = {"plain": 0.0, "fast": 0.0}
    for seed in range(4):
        slow, fast = pair("standard", "swish", memory_efficient)
        exact = copy.deepcopy(slow).double()
        torch.manual_seed(seed)
        x, g = torch.randn(4, 3, 8, 8), torch.randn(4, 3)
        step(exact, x.double(), g.double())
        for name, model in (("plain", slow), ("fast", fast)):
            precision = Precision(amp, torch.device("cpu"))
            precision.prepare(model, None)
            with precision.autocast():
                out = model(precision.cast_input(x))
            (out.float() * g).sum().backward()
            errors[name] += grad_error(model, exact)
    assert errors["fast"] <= 1.5 * errors["plain"] + 1e-3, errors


def test_model_impl_chooses_the_class_and_a_typo_fails_at_compose():
    cfg = compose_cfg(["model.impl=plain"])
    assert type(build_model(cfg, num_classes=10)) is DenseNet
    # the default small model trains plain (fast gains nothing there); the named presets fast
    assert type(build_model(compose_cfg(), num_classes=10)) is DenseNet
    for preset in ("densenet121", "densenet_bc100", "densenet40"):
        assert compose_cfg([f"model={preset}"]).model.impl.value == "fast", preset
    assert type(densenet121()) is FastDenseNet and type(densenet_bc()) is FastDenseNet
    assert type(build_model(compose_cfg(["model.impl=fast"]), num_classes=10)) is FastDenseNet
    with pytest.raises(Exception, match="quick"):
        compose_cfg(["model.impl=quick"])


def test_the_fast_path_says_once_which_layers_run_the_plain_way(caplog):
    with caplog.at_level(logging.INFO):
        FastDenseNet(4, (2, 2), 8, num_classes=3, stem="cifar", bottleneck=False)
    said = [r.getMessage() for r in caplog.records if "run the plain way" in r.getMessage()]
    assert said == [
        "model.impl=fast: _BasicDenseLayer layers run the plain way (no shared BN statistics)"
    ]


def test_editing_the_plain_layer_changes_what_trains_under_impl_plain(tmp_path, monkeypatch):
    cfg = [*TINY, "model.impl=plain", "trainer.max_steps=3"]
    before = train(compose_cfg(cfg), tmp_path / "before")
    calls = []
    original = plain._DenseLayer.bottleneck

    def doubled(self, *inputs):  # a researcher's idea: twice the bottleneck's output
        calls.append(len(inputs))
        return 2.0 * original(self, *inputs)

    monkeypatch.setattr(plain._DenseLayer, "bottleneck", doubled)
    after = train(compose_cfg(cfg), tmp_path / "after")
    assert calls and set(calls) == {1, 2}  # every layer of both blocks read its inputs through it
    w_before = torch.load(tmp_path / "before" / "checkpoints" / "last.pt", weights_only=True)
    w_after = torch.load(tmp_path / "after" / "checkpoints" / "last.pt", weights_only=True)
    changed = [
        k for k in w_before["model"] if not torch.equal(w_before["model"][k], w_after["model"][k])
    ]
    assert changed and before["final_val_loss"] != after["final_val_loss"]


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["model.impl=plain"], "impl=plain: models/densenet.py"),
        (["model.impl=fast"], "impl=fast: models/fast/densenet.py"),
        # a custom activation runs the plain way whatever model.impl asks: the line says so
        (["model.impl=fast", "act.name=custom", "act._target_=torch.nn.SiLU"], "impl=plain"),
    ],
)
def test_the_start_up_line_names_the_implementation_that_trains(tmp_path, caplog, overrides, said):
    caplog.set_level("INFO", logger="densenet_exp")
    train(compose_cfg([*TINY, "trainer.max_steps=1", *overrides]), tmp_path / "run")
    start = next(r.getMessage() for r in caplog.records if "params," in r.getMessage())
    assert f"model densenet_bc_digits ({said}" in start
