"""Factories for the parts a config can swap: the 3x3 conv of a dense layer, the activation, the
normalisation layer; each a built-in choice or a class of the user's own (``custom``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import ActName, ConvType, NormType

CONV_TYPES = tuple(m.value for m in ConvType)
ACTIVATIONS = tuple(m.value for m in ActName)
NORMS = tuple(m.value for m in NormType)

# ``act(channels, inplace=False)`` -> the configured activation module for that position
ActFactory = Callable[..., nn.Module]
# ``norm(channels)`` -> the configured normalisation module (BatchNorm2d by default)
NormFactory = Callable[[int], nn.Module]


class DSConv(nn.Sequential):
    """Depthwise-separable convolution: depthwise kxk -> (BN) -> pointwise 1x1.

    The BN between the two convolutions is the original trainer's; ``inner_bn=False`` drops it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        inner_bn: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        if inner_bn:
            self.bn = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


def custom(kind: str, target: str | None, *args: Any, **params: Any) -> nn.Module:
    """A module of the user's own class, built by Hydra's ``instantiate``."""
    if not target:
        raise ValueError(
            f"{kind}: custom needs {kind}._target_, the import path of your class "
            f"(e.g. my_ideas.GhostConv, importable from where you run)"
        )
    from hydra.utils import instantiate

    module = instantiate({"_target_": target, **params}, *args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{kind}._target_={target} built a {type(module).__name__}, not a module")
    return module


def make_conv(
    in_channels: int,
    out_channels: int,
    type: str = ConvType.standard,
    kernel_size: int = 3,
    dilation: int = 1,
    inner_bn: bool = True,
    _target_: str | None = None,
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """The spatial conv of a dense layer ("same" padding, stride 1)."""
    if type == ConvType.custom:
        return custom("conv", _target_, in_channels, out_channels, **(params or {}))
    if kernel_size % 2 == 0:
        raise ValueError(f"conv.kernel_size must be odd for 'same' padding, got {kernel_size}")
    if type == ConvType.standard:
        padding = dilation * (kernel_size - 1) // 2
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
    if type == ConvType.dsconv:
        return DSConv(in_channels, out_channels, kernel_size, dilation, inner_bn)
    raise ValueError(f"unknown conv type {type!r}; valid choices: {', '.join(CONV_TYPES)}")


def make_act(
    channels: int,
    name: str = ActName.relu,
    prelu_init: float = 0.25,
    prelu_per_channel: bool = False,
    inplace: bool = False,
    _target_: str | None = None,
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """One activation module per position, so PReLU slopes are learned per layer.

    ``inplace`` is honoured for ReLU only: it is safe right after a BN (whose backward needs its
    input, not its output) and saves one feature map per layer; the smooth activations need their
    input in backward.
    """
    if name == ActName.relu:
        return nn.ReLU(inplace=inplace)
    if name == ActName.swish:
        return nn.SiLU()
    if name == ActName.prelu:
        return nn.PReLU(num_parameters=channels if prelu_per_channel else 1, init=prelu_init)
    if name == ActName.gelu:
        return nn.GELU()
    if name == ActName.mish:
        return nn.Mish()
    if name == ActName.custom:
        params = dict(params or {})
        if _target_ and "num_channels" in _signature(_target_):
            params["num_channels"] = channels
        return custom("act", _target_, **params)
    raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(ACTIVATIONS)}")


def make_norm(
    channels: int,
    type: str = NormType.batch,
    _target_: str | None = None,
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """The normalisation before each activation: BatchNorm2d, or a class of the user's own.

    The user's class gets the channel count as ``num_channels=`` or ``num_features=`` if it
    takes either (so ``torch.nn.GroupNorm`` works with just ``params.num_groups``), else as the
    first argument.
    """
    if type == NormType.batch:
        return nn.BatchNorm2d(channels)
    if type == NormType.custom:
        params = dict(params or {})
        names = _signature(_target_) if _target_ else set()
        for key in ("num_channels", "num_features"):
            if key in names:
                return custom("norm", _target_, **params, **{key: channels})
        return custom("norm", _target_, channels, **params)
    raise ValueError(f"unknown norm type {type!r}; valid choices: {', '.join(NORMS)}")


def norm_factory(**norm_cfg: Any) -> NormFactory:
    """Bind the norm config so the network can ask for ``norm(channels)`` at each position."""
    norm_cfg = {k: v for k, v in norm_cfg.items() if k in ("type", "_target_", "params")}
    if norm_cfg.get("type", NormType.batch) == NormType.batch:
        return nn.BatchNorm2d  # the class itself: the network's modules are plain BatchNorm2d
    return lambda channels: make_norm(channels, **norm_cfg)


def act_factory(**act_cfg: Any) -> ActFactory:
    """Bind the act config so the network can ask for ``act(channels)`` at each position."""
    keys = ("name", "prelu_init", "prelu_per_channel", "_target_", "params")
    act_cfg = {k: v for k, v in act_cfg.items() if k in keys}

    def build(channels: int, inplace: bool = False) -> nn.Module:
        return make_act(channels, inplace=inplace, **act_cfg)

    return build


def _signature(target: str) -> set[str]:
    """The parameter names of the class at ``target`` (empty if it takes ``**kwargs`` only)."""
    import inspect

    from hydra.utils import get_class

    try:
        return set(inspect.signature(get_class(target)).parameters)
    except (ValueError, TypeError):
        return set()


def is_custom(
    conv_cfg: dict[str, Any], act_cfg: dict[str, Any], norm_cfg: dict[str, Any] | None = None
) -> list[str]:
    """The user's own classes among the conv, act and norm config, by import path."""
    found = []
    if conv_cfg.get("type") == ConvType.custom:
        found.append(str(conv_cfg.get("_target_")))
    if act_cfg.get("name") == ActName.custom:
        found.append(str(act_cfg.get("_target_")))
    if (norm_cfg or {}).get("type") == NormType.custom:
        found.append(str((norm_cfg or {}).get("_target_")))
    return found


def kaiming_gain_name(act_name: str) -> tuple[str, float]:
    """The nonlinearity (and slope) Kaiming init should assume for an activation."""
    if act_name == ActName.prelu:
        return "leaky_relu", 0.25
    return "relu", 0.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)


def norm_bias_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters that should get no weight decay: norms, biases and PReLU slopes."""
    ids: set[int] = set()
    for module in model.modules():
        if is_norm(module) or isinstance(module, nn.PReLU):
            ids.update(id(p) for p in module.parameters(recurse=False))
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
            ids.add(id(module.bias))
    return ids
