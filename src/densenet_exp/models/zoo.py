"""The named networks: torchvision's ImageNet DenseNets and the paper's CIFAR ones.

Each only picks constants; they read theirs (and ``impl``) from the presets of ``conf/model/``,
where the command line reads them too. ``impl`` chooses the implementation: ``fast``
(``models/fast``, what the presets say) or ``plain`` (``models/densenet.py``); both have the same
parameters, so
``densenet121().load_state_dict(torchvision.models.densenet121().state_dict())`` works with either.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from ..config import Impl, ModelConfig, config_dir
from ..config import node as config_node
from .architecture import cifar_block_config
from .densenet import DenseNet
from .fast import DenseNet as FastDenseNet

IMPLS: dict[Impl, type[DenseNet]] = {Impl.fast: FastDenseNet, Impl.plain: DenseNet}


def implementation(impl: Impl | str) -> type[DenseNet]:
    """The class of ``model.impl``: ``fast`` (models/fast) or ``plain`` (models/densenet.py)."""
    return IMPLS[Impl.parse(impl, "model.impl")]


def implementation_of(model: nn.Module) -> Impl:
    """Which implementation ``model`` is: what the start-up line names, so a reader editing
    ``models/densenet.py`` knows whether that file is what trains."""
    return Impl.fast if isinstance(model, FastDenseNet) else Impl.plain


def _densenet(
    growth_rate: int,
    block_config: Sequence[int],
    num_init_features: int,
    impl: Impl | str,
    **kwargs: Any,
) -> DenseNet:
    return implementation(impl)(growth_rate, block_config, num_init_features, **kwargs)


@cache
def preset(name: str) -> ModelConfig:
    """A preset of ``conf/model/``: its sizes are written there once, for the command line and
    for these factories alike."""
    return config_node(ModelConfig, OmegaConf.load(config_dir() / "model" / f"{name}.yaml"))


def _imagenet(name: str, num_classes: int, options: dict[str, Any]) -> DenseNet:
    m = preset(name)
    options.setdefault("stem", m.stem.value)
    options.setdefault("impl", m.impl)
    return _densenet(
        m.growth_rate,
        tuple(m.block_config),
        m.num_init_features,
        num_classes=num_classes,
        **options,
    )


def densenet121(num_classes: int = 1000, **options: Any) -> DenseNet:
    """DenseNet-121 (k=32, blocks (6, 12, 24, 16)). With no ``options``: torchvision's architecture
    and parameter names. ``options``: ``bn_size``, ``compression``, ``drop_rate``, ``stem``,
    ``memory_efficient``, ``bottleneck``, ``impl`` and the ``act``, ``conv``, ``norm`` and
    ``init`` nodes as dicts (``conv={"type": "dsconv"}``), as the config names them."""
    return _imagenet("densenet121", num_classes, options)


def densenet161(num_classes: int = 1000, **options: Any) -> DenseNet:
    """DenseNet-161 (k=48, blocks (6, 12, 36, 24)); ``options`` as for ``densenet121``."""
    return _imagenet("densenet161", num_classes, options)


def densenet169(num_classes: int = 1000, **options: Any) -> DenseNet:
    """DenseNet-169 (k=32, blocks (6, 12, 32, 32)); ``options`` as for ``densenet121``."""
    return _imagenet("densenet169", num_classes, options)


def densenet201(num_classes: int = 1000, **options: Any) -> DenseNet:
    """DenseNet-201 (k=32, blocks (6, 12, 48, 32)); ``options`` as for ``densenet121``."""
    return _imagenet("densenet201", num_classes, options)


def densenet264(num_classes: int = 1000, **options: Any) -> DenseNet:
    """DenseNet-264 (k=32, blocks (6, 12, 64, 48)); ``options`` as for ``densenet121``."""
    return _imagenet("densenet264", num_classes, options)


def densenet_bc(
    depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **options: Any
) -> DenseNet:
    """CIFAR DenseNet-BC: 3 blocks of (depth - 4) / 6 bottleneck layers, 3x3 stem of 2k maps."""
    blocks = cifar_block_config(depth, bottleneck=True, prefix="")
    options.setdefault("stem", "cifar")
    options.setdefault("impl", preset("densenet_bc100").impl)
    return _densenet(growth_rate, blocks, 2 * growth_rate, num_classes=num_classes, **options)


def densenet_cifar(
    depth: int = 40, growth_rate: int = 12, num_classes: int = 10, **options: Any
) -> DenseNet:
    """The paper's CIFAR DenseNet without B or C: (depth - 4) / 3 basic layers per block, a 3x3
    stem of 16 maps, transitions that keep every map (Huang et al. 2017, Table 2)."""
    blocks = cifar_block_config(depth, bottleneck=False, prefix="")
    options.setdefault("stem", "cifar")
    options.setdefault("impl", preset("densenet40").impl)
    options.setdefault("compression", 1.0)
    return _densenet(growth_rate, blocks, 16, num_classes=num_classes, bottleneck=False, **options)
