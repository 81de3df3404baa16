"""The named networks: torchvision's ImageNet DenseNets and the paper's CIFAR ones.

Each only picks constants. ``impl`` chooses the implementation: ``fast`` (``models/fast``, the
default) or ``plain`` (``models/densenet.py``); both have the same parameters, so
``densenet121().load_state_dict(torchvision.models.densenet121().state_dict())`` works with either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .architecture import cifar_block_config
from .densenet import DenseNet
from .fast import DenseNet as FastDenseNet


def _densenet(
    growth_rate: int,
    block_config: Sequence[int],
    num_init_features: int,
    impl: str = "fast",
    **kwargs: Any,
) -> DenseNet:
    """The network of ``impl``: ``fast`` (models/fast, the default) or ``plain``."""
    if impl == "plain":
        return DenseNet(growth_rate, block_config, num_init_features, **kwargs)
    if impl == "fast":
        return FastDenseNet(growth_rate, block_config, num_init_features, **kwargs)
    raise ValueError(f"unknown model.impl {impl!r}; valid choices: fast, plain")


def densenet121(num_classes: int = 1000, **options: Any) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, num_classes=num_classes, **options)


def densenet161(num_classes: int = 1000, **options: Any) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, num_classes=num_classes, **options)


def densenet169(num_classes: int = 1000, **options: Any) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, num_classes=num_classes, **options)


def densenet201(num_classes: int = 1000, **options: Any) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, num_classes=num_classes, **options)


def densenet264(num_classes: int = 1000, **options: Any) -> DenseNet:
    return _densenet(32, (6, 12, 64, 48), 64, num_classes=num_classes, **options)


def densenet_bc(
    depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **options: Any
) -> DenseNet:
    """CIFAR DenseNet-BC: 3 blocks of (depth - 4) / 6 bottleneck layers, 3x3 stem of 2k maps."""
    blocks = cifar_block_config(depth, bottleneck=True, prefix="")
    options.setdefault("stem", "cifar")
    return _densenet(growth_rate, blocks, 2 * growth_rate, num_classes=num_classes, **options)


def densenet_cifar(
    depth: int = 40, growth_rate: int = 12, num_classes: int = 10, **options: Any
) -> DenseNet:
    """The paper's CIFAR DenseNet without B or C: (depth - 4) / 3 basic layers per block, a 3x3
    stem of 16 maps, transitions that keep every map (Huang et al. 2017, Table 2)."""
    blocks = cifar_block_config(depth, bottleneck=False, prefix="")
    options.setdefault("stem", "cifar")
    options.setdefault("compression", 1.0)
    return _densenet(growth_rate, blocks, 16, num_classes=num_classes, bottleneck=False, **options)
