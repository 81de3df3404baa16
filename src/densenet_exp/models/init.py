"""Weight initialisation, applied to every conv (the depthwise and pointwise ones of dsconv too)."""

from __future__ import annotations

from torch import nn

from ..config import ActName, InitConfig, InitDistribution, InitName
from .layers import kaiming_gain_name

INITS = tuple(m.value for m in InitName)
_DEFAULT = InitConfig()  # the config's defaults are the Python API's too


def init_weights(
    model: nn.Module,
    name: str = _DEFAULT.name,
    mode: str = _DEFAULT.mode,
    distribution: str = _DEFAULT.distribution,
    act_name: str = ActName.relu,
) -> None:
    """Conv weights by ``name``; BN weight 1 / bias 0; Linear bias 0 (torchvision's scheme).

    ``default`` keeps PyTorch's per-layer init for conv and linear weights.
    """
    name = InitName.parse(name, "init")
    distribution = InitDistribution.parse(distribution, "init.distribution")
    mode = str(mode)  # torch's kaiming_* compare it with plain strings
    nonlinearity, slope = kaiming_gain_name(act_name)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and name != InitName.default:
            if name == InitName.kaiming:
                fn = (
                    nn.init.kaiming_normal_
                    if distribution == InitDistribution.normal
                    else nn.init.kaiming_uniform_
                )
                fn(m.weight, a=slope, mode=mode, nonlinearity=nonlinearity)
            elif name == InitName.xavier:
                normal = distribution == InitDistribution.normal
                fn = nn.init.xavier_normal_ if normal else nn.init.xavier_uniform_
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
