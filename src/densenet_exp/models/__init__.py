"""The DenseNet family and ``build_model`` from a composed config.

``DenseNet`` is the plain, paper-shaped network (``models/densenet.py``); ``FastDenseNet``
(``models/fast/``) is the same network with the same parameters, computed faster: ``model.impl``
chooses, and the factories (``densenet121(...)``) take ``impl="fast"`` (default) or ``"plain"``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..config import Config, Impl, ModelConfig, Stem, to_plain, to_typed
from ..config import node as config_node
from .architecture import ArchitectureError, check_options, resolve_block_config
from .densenet import DenseNet
from .fast import DenseNet as FastDenseNet
from .layers import count_parameters, is_custom
from .weights import load_pretrained
from .zoo import (
    densenet121,
    densenet161,
    densenet169,
    densenet201,
    densenet264,
    densenet_bc,
    densenet_cifar,
    implementation,
    implementation_of,
)

__all__ = [
    "ArchitectureError",
    "DenseNet",
    "FastDenseNet",
    "build_model",
    "check_model_config",
    "compile_model",
    "count_parameters",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "densenet264",
    "densenet_bc",
    "densenet_cifar",
    "implementation_of",
    "load_pretrained",
    "min_input_size",
]

log = logging.getLogger(__name__)


def check_model_config(model_cfg: ModelConfig | Any) -> list[int]:
    """Every architecture key in range, before any work; returns the layers per block."""
    m = config_node(ModelConfig, model_cfg, "model")
    blocks = resolve_block_config(m.depth, m.block_config, m.bottleneck)
    check_options(
        prefix="model.",
        growth_rate=m.growth_rate,
        num_init_features=m.num_init_features,
        bn_size=m.bn_size,
        compression=m.compression,
        drop_rate=m.drop_rate,
    )
    return blocks


def min_input_size(model_cfg: ModelConfig | Any) -> int:
    """The total downsampling of the network: smaller inputs leave no pixel for the last block."""
    m = config_node(ModelConfig, model_cfg, "model")
    blocks = resolve_block_config(m.depth, m.block_config, m.bottleneck)
    return (4 if m.stem == Stem.imagenet else 1) * 2 ** (len(blocks) - 1)


def build_model(cfg: Config | Any, num_classes: int | None = None) -> nn.Module:
    """Build the network described by ``cfg.model``, ``cfg.conv``, ``cfg.act`` and ``cfg.init``.

    ``cfg`` is the typed ``Config`` (or the composed config in any form). ``num_classes`` (from
    the data) is used when ``cfg.model.num_classes`` is null; when both are given they must agree.
    """
    cfg = to_typed(cfg)
    m = cfg.model
    if m.num_classes is not None and num_classes is not None and m.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={m.num_classes} but the data has {num_classes} classes; "
            "set model.num_classes=null to take it from the data"
        )
    n_cls = m.num_classes if m.num_classes is not None else num_classes
    if n_cls is None:
        raise ValueError("model.num_classes is null and no class count came from the data")
    blocks = resolve_block_config(m.depth, m.block_config, m.bottleneck)  # DenseNet checks the rest
    # the model's Python API takes plain keyword options (enums as strings)
    conv_cfg, act_cfg, norm_cfg = to_plain(cfg.conv), to_plain(cfg.act), to_plain(cfg.norm)
    impl = m.impl
    own = is_custom(conv_cfg, act_cfg, norm_cfg)
    if impl == Impl.fast and own:
        # the fast kernels know the built-in modules only: yours run as models/densenet.py says
        log.info("model.impl=fast does not know %s: the model runs the plain way", ", ".join(own))
        impl = Impl.plain
    model = implementation(impl)(
        growth_rate=m.growth_rate,
        block_config=tuple(blocks),
        bottleneck=m.bottleneck,
        num_init_features=m.num_init_features,
        bn_size=m.bn_size,
        compression=m.compression,
        drop_rate=m.drop_rate,
        num_classes=n_cls,
        stem=m.stem.value,
        memory_efficient=m.memory_efficient,
        act=act_cfg,
        conv=conv_cfg,
        norm=norm_cfg,
        init=to_plain(cfg.init),
    )
    if m.pretrained:
        replaced = load_pretrained(model, m.pretrained)
        log.info(
            "loaded pretrained weights from %s%s",
            m.pretrained,
            f" (new classifier for {n_cls} classes)" if replaced else "",
        )
    return model


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``. Call ``process.configure_compiler()`` once first (the engine's
    rank start-up does): it lets the memory-efficient layers compile without graph breaks."""
    return torch.compile(model)
