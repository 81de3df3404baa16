"""Weight initialisation, applied to every conv (the depthwise and pointwise ones of dsconv too)."""

from __future__ import annotations

from torch import nn

from .layers import kaiming_gain_name

INITS = ("kaiming", "xavier", "orthogonal", "default")


def init_weights(
    model: nn.Module,
    name: str = "kaiming",
    mode: str = "fan_in",
    distribution: str = "normal",
    act_name: str = "relu",
) -> None:
    """Conv weights by ``name``; BN weight 1 / bias 0; Linear bias 0 (torchvision's scheme).

    ``default`` keeps PyTorch's per-layer init for conv and linear weights.
    """
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; valid choices: {', '.join(INITS)}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"unknown init.distribution {distribution!r}; valid: normal, uniform")
    nonlinearity, slope = kaiming_gain_name(act_name)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and name != "default":
            if name == "kaiming":
                fn = (
                    nn.init.kaiming_normal_
                    if distribution == "normal"
                    else nn.init.kaiming_uniform_
                )
                fn(m.weight, a=slope, mode=mode, nonlinearity=nonlinearity)
            elif name == "xavier":
                fn = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_
                fn(m.weight, gain=nn.init.calculate_gain(nonlinearity, slope or None))
            else:
                nn.init.orthogonal_(
                    m.weight, gain=nn.init.calculate_gain(nonlinearity, slope or None)
                )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
