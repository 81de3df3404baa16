"""DenseNet (Huang et al., CVPR 2017) as the paper draws it, with swappable conv, act, norm, init.

This is the network ``model.impl=plain`` trains, written to be read and edited: each class is one
part of the paper's figure, and what a method computes is what trains. The structure and parameter
names follow torchvision's ``models/densenet.py`` so its weights load:
``features.{conv0,norm0,pool0,denseblockN,transitionN,norm5}`` and ``classifier``. Activations are
modules named ``act*`` (one per position), which only matters for PReLU, the one with parameters.

``models/fast/`` is a second implementation of the same modules with the same parameters (shared
BN statistics, recompute-in-backward kernels, pool-before-conv), the default ``model.impl=fast``,
tested equal to this one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ActName, ConvType, Stem
from .architecture import check_options
from .init import init_weights
from .layers import ActFactory, NormFactory, act_factory, make_conv, norm_factory
from .recompute import recomputed, recomputes


def as_list(inputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [inputs] if isinstance(inputs, Tensor) else list(inputs)


class _DenseLayer(nn.Module):
    """The bottleneck layer ("B"): BN-act-1x1 conv to bn_size*k maps, then BN-act-3x3 conv to k."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool,
        act: ActFactory,
        conv: dict[str, Any],
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = norm(num_input_features)
        self.act1 = act(num_input_features, inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, width, kernel_size=1, bias=False)
        self.norm2 = norm(width)
        self.act2 = act(width, inplace=True)
        self.conv2 = make_conv(width, growth_rate, **conv)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *inputs: Tensor) -> Tensor:
        """concat -> BN -> act -> 1x1 conv: reads every earlier feature map."""
        return self.conv1(self.act1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        features = as_list(inputs)
        if recomputes(self):
            h = recomputed(self, self.bottleneck, *features)  # keeps bn_size*k maps, not the concat
        else:
            h = self.bottleneck(*features)
        new = self.conv2(self.act2(self.norm2(h)))
        return F.dropout(new, p=self.drop_rate, training=self.training) if self.drop_rate else new


class _BasicDenseLayer(nn.Module):
    """The basic composite layer H_l: BN-act-3x3 conv to k new feature maps, no bottleneck.

    DenseNet and DenseNet-C (the paper's Table 2) are built of these. ``memory_efficient``
    recomputes the whole layer in backward and keeps only its k output maps.
    """

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool,
        act: ActFactory,
        conv: dict[str, Any],
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.norm1 = norm(num_input_features)
        self.act1 = act(num_input_features, inplace=True)
        self.conv1 = make_conv(num_input_features, growth_rate, **conv)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def composite(self, *inputs: Tensor) -> Tensor:
        """concat -> BN -> act -> 3x3 conv."""
        return self.conv1(self.act1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        features = as_list(inputs)
        if recomputes(self):
            new = recomputed(self, self.composite, *features)
        else:
            new = self.composite(*features)
        return F.dropout(new, p=self.drop_rate, training=self.training) if self.drop_rate else new


class _DenseBlock(nn.ModuleDict):
    """num_layers dense layers, each reading the block's input and every earlier layer's output."""

    bottleneck_layer: type[nn.Module] = _DenseLayer
    basic_layer: type[nn.Module] = _BasicDenseLayer

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool,
        act: ActFactory,
        conv: dict[str, Any],
        bottleneck: bool = True,
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            width = num_input_features + i * growth_rate
            if bottleneck:
                layer = self.bottleneck_layer(
                    width, growth_rate, bn_size, drop_rate, memory_efficient, act, conv, norm
                )
            else:
                layer = self.basic_layer(
                    width, growth_rate, drop_rate, memory_efficient, act, conv, norm
                )
            self.add_module(f"denselayer{i + 1}", layer)
        self.num_output_features = num_input_features + num_layers * growth_rate

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """Between blocks: BN-act-1x1 conv to compression x the maps, then 2x2 average pooling."""

    def __init__(
        self,
        num_input_features: int,
        num_output_features: int,
        act: ActFactory,
        norm: NormFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.norm = norm(num_input_features)
        self.act = act(num_input_features, inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Densely connected network.

    Args:
        growth_rate: feature maps each layer adds (k).
        block_config: layers in each dense block.
        num_init_features: feature maps of the stem.
        bn_size: bottleneck width as a multiple of k.
        compression: fraction of feature maps a transition keeps (0.5 in DenseNet-BC).
        drop_rate: dropout after each dense layer.
        num_classes: classifier outputs.
        stem: ``imagenet`` (7x7/s2 conv + max-pool) or ``cifar`` (3x3/s1 conv).
        memory_efficient: recompute each layer's concatenation-reading part in backward instead
            of keeping it (torchvision's checkpointing), for less memory at some speed.
        act: activation config (``name``, ``prelu_init``, ``prelu_per_channel``).
        conv: spatial conv config (``type``, ``kernel_size``, ``dilation``, ``inner_bn``).
        init: weight init config (``name``, ``mode``, ``distribution``).
        bottleneck: dense layers with a 1x1 bottleneck ("B"), or the basic BN-act-3x3 conv layer.
        norm: normalisation config (``type``: ``batch``, or ``custom``: ``_target_``, ``params``).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        stem: str = Stem.imagenet,
        memory_efficient: bool = False,
        act: dict[str, Any] | None = None,
        conv: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
        bottleneck: bool = True,
        norm: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_options(
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            num_init_features=num_init_features,
            bn_size=bn_size,
            compression=compression,
            drop_rate=drop_rate,
        )
        act_cfg = {"name": ActName.relu, **(act or {})}
        make_act, make_norm = act_factory(**act_cfg), norm_factory(**(norm or {}))
        self.stem = stem
        self.memory_efficient = memory_efficient
        self.features = _stem(stem, num_init_features, make_act, make_norm)
        num_features = self._add_blocks(
            block_config,
            num_init_features,
            compression,
            dict(
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
                act=make_act,
                conv={"type": ConvType.standard, **(conv or {})},
                bottleneck=bottleneck,
                norm=make_norm,
            ),
        )
        self.features.add_module("norm5", make_norm(num_features))
        self.features.add_module("act5", make_act(num_features, inplace=True))
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        init_weights(self, act_name=act_cfg["name"], **(init or {}))

    def _add_blocks(
        self,
        block_config: Sequence[int],
        num_features: int,
        compression: float,
        layer_options: dict[str, Any],
    ) -> int:
        """Dense blocks with a transition between each two; returns the last block's width."""
        for i, num_layers in enumerate(block_config):
            last = i == len(block_config) - 1
            block = self._block(num_layers, num_features, layer_options, last)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * layer_options["growth_rate"]
            if not last:
                out_features = int(num_features * compression)
                transition = self._transition(num_features, out_features, layer_options)
                self.features.add_module(f"transition{i + 1}", transition)
                num_features = out_features
        return num_features

    def _block(
        self, num_layers: int, num_features: int, layer_options: dict[str, Any], last: bool
    ) -> nn.Module:
        """One dense block (``last``: no transition follows it); models/fast builds its own."""
        return _DenseBlock(num_layers, num_features, **layer_options)

    def _transition(
        self, num_features: int, out_features: int, layer_options: dict[str, Any]
    ) -> nn.Module:
        return _Transition(num_features, out_features, layer_options["act"], layer_options["norm"])

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.adaptive_avg_pool2d(features, 1).flatten(1)
        return self.classifier(out)


def _stem(
    stem: str, num_init_features: int, act: ActFactory, norm: NormFactory = nn.BatchNorm2d
) -> nn.Sequential:
    """``imagenet``: 7x7/s2 conv, BN, act, 3x3/s2 max-pool; ``cifar``: one 3x3/s1 conv."""
    if stem == Stem.imagenet:
        return nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
                norm0=norm(num_init_features),
                act0=act(num_init_features, inplace=True),
                pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
    if stem == Stem.cifar:
        return nn.Sequential(
            OrderedDict(conv0=nn.Conv2d(3, num_init_features, 3, stride=1, padding=1, bias=False))
        )
    raise ValueError(f"unknown stem {stem!r}; valid choices: {Stem.valid()}")
