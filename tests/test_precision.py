import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from densenet_exp.models.fast import DenseNet  # what trains by default
from densenet_exp.optim import build_optimizer
from densenet_exp.precision import APEX_REMOVED, Precision, PrecisionError

CPU = torch.device("cpu")


def amp(level="O0", **overrides):
    node = {
        "opt_level": level,
        "dtype": "auto",
        "keep_batchnorm_fp32": None,
        "master_weights": None,
        "loss_scale": None,
        "backend": "native",
    }
    node.update(overrides)
    return node


def setup(level, **overrides):
    torch.manual_seed(0)
    model = DenseNet(4, (2, 2), 8, num_classes=3, stem="cifar")
    opt = build_optimizer(
        model,
        OmegaConf.create(
            {
                "name": "sgd",
                "lr": 0.05,
                "momentum": 0.9,
                "nesterov": False,
                "betas": [0.9, 0.999],
                "weight_decay": 0.0,
                "no_decay_norm_bias": True,
            }
        ),
    )
    policy = Precision(amp(level, **overrides), CPU)
    policy.prepare(model, opt)
    return model, opt, policy


def train_steps(model, opt, policy, steps, x, y):
    losses = []
    for _ in range(steps):
        with policy.autocast():
            loss = nn.functional.cross_entropy(model(policy.cast_input(x)).float(), y)
        policy.backward(loss)
        policy.step(opt)
        policy.zero_grad(opt, model)
        losses.append(loss.item())
    return losses


# level -> (conv weight dtype, BN weight dtype, has masters, forward output dtype)
TABLE = {
    "O0": (torch.float32, torch.float32, False, torch.float32),
    "O1": (torch.float32, torch.float32, False, torch.bfloat16),
    "O2": (torch.bfloat16, torch.float32, True, torch.bfloat16),
    "O3": (torch.bfloat16, torch.bfloat16, False, torch.bfloat16),
}


@pytest.mark.parametrize("level", list(TABLE))
def test_each_level_sets_the_dtypes_of_its_row_in_the_table(level):
    conv_dtype, bn_dtype, masters, out_dtype = TABLE[level]
    model, opt, policy = setup(level)
    layer = model.features.denseblock1.denselayer1
    assert layer.conv1.weight.dtype == conv_dtype
    assert layer.norm1.weight.dtype == bn_dtype and layer.norm1.running_mean.dtype == bn_dtype
    master_list = list(policy.master_params())
    assert bool(master_list) == masters
    if masters:
        assert all(m.dtype == torch.float32 for m in master_list)
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {
            id(m) for m in master_list
        }
    with policy.autocast():
        out = model(policy.cast_input(torch.randn(2, 3, 8, 8)))
    assert out.dtype == out_dtype


@pytest.mark.parametrize("level", list(TABLE))
def test_twenty_steps_lower_the_loss_at_every_level(level):
    model, opt, policy = setup(level)
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 3
    losses = train_steps(model, opt, policy, 20, x, y)
    assert losses[-1] < 0.7 * losses[0], losses


def test_level_defaults_for_loss_scaling_follow_apex():
    assert Precision(amp("O1", dtype="float16"), CPU).spec.loss_scale == "dynamic"
    assert Precision(amp("O2", dtype="float16"), CPU).spec.loss_scale == "dynamic"
    assert Precision(amp("O3", dtype="float16"), CPU).spec.loss_scale is None
    assert Precision(amp("O1"), CPU).spec.loss_scale is None  # bf16 has fp32's range
    assert Precision(amp("O2", loss_scale="128"), CPU).spec.loss_scale == 128.0
    s = Precision(amp("O2", dtype="float16"), CPU).scaler
    assert s.get_scale() == 2.0**16 and s.get_growth_interval() == 2000
    assert s.get_backoff_factor() == 0.5 and s.get_growth_factor() == 2.0


@pytest.mark.parametrize("level, dtype", [("O1", "float16"), ("O2", "float16"), ("O2", "bfloat16")])
def test_an_inf_gradient_is_skipped_the_scale_halves_and_weights_stay(level, dtype):
    model, opt, policy = setup(level, dtype=dtype, loss_scale="dynamic")
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4) % 3
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    masters_before = [m.clone() for m in policy.master_params()]
    scale = policy.loss_scale
    with policy.autocast():
        loss = nn.functional.cross_entropy(model(policy.cast_input(x)).float(), y)
    policy.backward(loss)
    model.classifier.weight.grad[0, 0] = float("inf")  # an overflow in one gradient
    policy.step(opt)
    assert policy.loss_scale == scale / 2
    assert policy.skipped_steps == 1
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, msg=name)
    for m, b in zip(policy.master_params(), masters_before):
        torch.testing.assert_close(m, b, rtol=0, atol=0)
    # and the next clean step does update the weights
    policy.zero_grad(opt, model)
    train_steps(model, opt, policy, 1, x, y)
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])


def test_o3_with_a_dynamic_scale_unscales_fp16_gradients():
    model, opt, policy = setup("O3", dtype="float16", loss_scale="dynamic")
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3
    losses = train_steps(model, opt, policy, 5, x, y)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.classifier.weight.dtype == torch.float16


def test_scaler_and_master_state_round_trip_and_resume_reproduces_the_next_step(tmp_path):
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 3
    model, opt, policy = setup("O2", dtype="float16")
    train_steps(model, opt, policy, 3, x, y)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "precision": policy.state_dict()},
        path,
    )
    train_steps(model, opt, policy, 1, x, y)
    expected = [m.clone() for m in policy.master_params()]

    state = torch.load(path, weights_only=True)
    model2, opt2, policy2 = setup("O2", dtype="float16")
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    policy2.load_state_dict(state["precision"])
    assert policy2.loss_scale == policy.loss_scale
    train_steps(model2, opt2, policy2, 1, x, y)
    for a, b in zip(policy2.master_params(), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "level, overrides, message",
    [
        ("O1", {"keep_batchnorm_fp32": True}, "keep_batchnorm_fp32=True has no meaning"),
        ("O0", {"master_weights": True}, "master_weights=True has no meaning"),
        ("O2", {"loss_scale": "huge"}, "'dynamic' or a positive number"),
        ("O2", {"loss_scale": "-4"}, "positive finite number"),
        ("O4", {}, "valid choices: O0, O1, O2, O3"),
        ("O2", {"dtype": "float8"}, "valid choices: auto, float16, bfloat16"),
    ],
)
def test_invalid_combinations_raise_clear_errors(level, overrides, message):
    with pytest.raises(PrecisionError, match=message):
        Precision(amp(level, **overrides), CPU)


def test_apex_backend_without_apex_explains_the_removal_and_names_native():
    with pytest.raises(PrecisionError) as e:
        Precision(amp("O2", backend="apex"), CPU)
    assert str(e.value) == APEX_REMOVED
    assert "25.07" in APEX_REMOVED and "amp.backend=native" in APEX_REMOVED


def test_o2_overrides_keep_bn_low_and_drop_masters_when_asked():
    model, _, policy = setup("O2", keep_batchnorm_fp32=False, master_weights=False)
    assert model.features.norm5.weight.dtype == torch.bfloat16
    assert list(policy.master_params()) == []
