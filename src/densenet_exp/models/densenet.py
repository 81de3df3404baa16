"""DenseNet (Huang et al., 2017) with swappable conv, activation and init.

The structure and parameter names follow torchvision's ``models/densenet.py`` so its weights load:
``features.{conv0,norm0,pool0,denseblockN,transitionN,norm5}`` and ``classifier``. Activations are
modules named ``act*`` (one per position), which only matters for PReLU, the one with parameters.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from . import heap
from .architecture import check_options, cifar_block_config
from .fused import (
    bn_act_conv,
    bn_act_pool,
    cat_channels,
    fusable,
    input_conv,
    normalize,
    pool_commutes,
    read_bn_act_conv,
    shareable,
    unbiased_var,
    unit_stats,
    update_running_stats,
)
from .init import init_weights
from .layers import ActFactory, act_factory, make_conv


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Recomputation in backward must not update BN running stats a second time.

    A momentum of 0 leaves running_mean/var unchanged while still normalising with batch stats,
    so the memory-efficient model's running stats equal the plain model's.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in bns if m.track_running_stats]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _feature_list(inputs: Tensor | Sequence[Tensor] | DenseFeatures) -> list[Tensor]:
    """A dense layer's inputs as the list of feature maps they are."""
    if isinstance(inputs, DenseFeatures):
        return inputs.raw
    return [inputs] if isinstance(inputs, Tensor) else list(inputs)


# torch.compile (2.14) cannot trace a checkpoint with a context_fn ("checkpoint not
# implemented for ... context_fn"), and the context is what keeps the recomputation from
# updating the running stats twice: this part runs eagerly, a graph break per dense layer.
@torch.compiler.disable
def _recomputed(module: nn.Module, fn: Any, *features: Tensor) -> Tensor:
    """``fn(*features)``, recomputed in backward through the modules, BN stats updated once.

    No RNG inside, so no RNG state to stash.
    """
    return cp.checkpoint(
        fn,
        *features,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_bn_stats(module)),
    )


class _DenseLayer(nn.Module):
    """BN-act-1x1 conv (bottleneck to bn_size*k) then BN-act-3x3 conv to k new feature maps."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool,
        act: ActFactory,
        conv: dict[str, Any],
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.act1 = act(num_input_features, inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.act2 = act(width, inplace=True)
        self.conv2 = make_conv(width, growth_rate, **conv)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *inputs: Tensor) -> Tensor:
        """concat -> BN -> act -> 1x1 conv -> BN -> act: the activations that grow with depth."""
        x = cat_channels(inputs)
        return self.act2(self.norm2(self.conv1(self.act1(self.norm1(x)))))

    def forward(self, inputs: Tensor | Sequence[Tensor] | DenseFeatures) -> Tensor:
        lean = self.memory_efficient and self.training and torch.is_grad_enabled()
        out = self._dropout(self._features(inputs, lean))
        if lean:
            heap.release_if_slack(out.device)  # see heap: glibc keeps the holes of transients
        return out

    def _features(self, inputs: Tensor | Sequence[Tensor] | DenseFeatures, lean: bool) -> Tensor:
        if isinstance(inputs, DenseFeatures) and inputs.normalized is not None:
            # the block normalised each feature map once and keeps norm1's running stats
            h = read_bn_act_conv(
                inputs.normalized, self.norm1, self.act1, self.conv1, inputs.unit, lean
            )
            if lean and fusable(self.norm2, self.conv2):
                return bn_act_conv([h], self.norm2, self.act2, self.conv2)
            return self.conv2(self.act2(self.norm2(h)))
        features = _feature_list(inputs)
        if not lean:
            return self.conv2(self.bottleneck(*features))
        if fusable(self.norm1, self.conv1):
            # keep only the inputs of each BN-act-conv; backward recomputes BN and act, not convs
            h = bn_act_conv(features, self.norm1, self.act1, self.conv1)
            if fusable(self.norm2, self.conv2):
                return bn_act_conv([h], self.norm2, self.act2, self.conv2)
            # dsconv: depthwise -> BN -> pointwise stays a module
            return self.conv2(self.act2(self.norm2(h)))
        # synchronized BN needs its collectives: recompute the bottleneck through the modules
        return self.conv2(_recomputed(self, self.bottleneck, *features))

    def _dropout(self, out: Tensor) -> Tensor:
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _BasicDenseLayer(nn.Module):
    """The paper's basic composite layer H_l: BN-act-3x3 conv to k new feature maps, no bottleneck.

    DenseNet and DenseNet-C (Huang et al. 2017, Table 2) are built of these. The fast shared
    statistics do not apply: a block of them runs as written here. ``memory_efficient``
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
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.act1 = act(num_input_features, inplace=True)
        self.conv1 = make_conv(num_input_features, growth_rate, **conv)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def composite(self, *inputs: Tensor) -> Tensor:
        """concat -> BN -> act -> 3x3 conv."""
        return self.conv1(self.act1(self.norm1(cat_channels(inputs))))

    def forward(self, inputs: Tensor | Sequence[Tensor] | DenseFeatures) -> Tensor:
        features = _feature_list(inputs)
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            out = _recomputed(self, self.composite, *features)
            heap.release_if_slack(out.device)
        else:
            out = self.composite(*features)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseFeatures:
    """The feature maps of a dense block so far, as its layers and its transition read them.

    In training with plain BNs of one eps, each map is also batch-normalised once as it arrives
    (``normalized``); the readers then only scale and shift (see ``fused``). ``raw`` serves the
    other cases (eval, synchronized BN).
    """

    def __init__(
        self, eps: float | None, unit: tuple[Tensor, Tensor] | None = None, lean: bool = False
    ) -> None:
        self.raw: list[Tensor] = []
        self.eps = eps
        self.unit = unit  # zeros and ones of the block's width: see fused.unit_stats
        self.lean = lean
        self.normalized: list[Tensor] | None = [] if eps is not None else None
        self._means: list[Tensor] = []
        self._invstds: list[Tensor] = []
        self._stats: tuple[Tensor, Tensor] | None = None

    def append(self, x: Tensor) -> None:
        self.raw.append(x)
        if self.normalized is not None:
            # lean: keep the normalised copy only (the readers keep it), not x as well
            x_hat, mean, invstd = normalize(x, self.eps, keep_input=not self.lean)
            self.normalized.append(x_hat)
            self._means.append(mean)
            self._invstds.append(invstd)
            self._stats = None

    def stats(self) -> tuple[Tensor, Tensor]:
        """Batch mean and unbiased variance of every channel so far, in channel order."""
        if self._stats is None:
            with torch.no_grad():
                n = self.raw[0].numel() // self.raw[0].shape[1]
                invstd = torch.cat(self._invstds)
                self._stats = (torch.cat(self._means), unbiased_var(invstd, self.eps, n))
        return self._stats

    def readable_by(self, bn: nn.Module) -> bool:
        return self.normalized is not None and shareable(bn) and bn.training and bn.eps == self.eps

    def cat(self) -> Tensor:
        return cat_channels(self.raw)


class _DenseBlock(nn.ModuleDict):
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
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            width = num_input_features + i * growth_rate
            layer: nn.Module
            if bottleneck:
                layer = _DenseLayer(
                    width, growth_rate, bn_size, drop_rate, memory_efficient, act, conv
                )
            else:
                layer = _BasicDenseLayer(width, growth_rate, drop_rate, memory_efficient, act, conv)
            self.add_module(f"denselayer{i + 1}", layer)

        self.num_output_features = num_input_features + num_layers * growth_rate
        # set on blocks followed by a transition: it reads the features without their
        # concatenation being stored (and, in training, already normalised)
        self.return_features = False

    def _shared_eps(self) -> float | None:
        """The eps of the layers' first BNs when they can share per-feature statistics."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        if not all(type(layer) is _DenseLayer for layer in self.values()):
            return None  # basic layers run as written (no shared statistics)
        norms = [layer.norm1 for layer in self.values()]
        eps = norms[0].eps
        if all(shareable(bn) and bn.training and bn.eps == eps for bn in norms):
            return eps
        return None

    def forward(self, init_features: Tensor) -> Tensor | DenseFeatures:
        eps = self._shared_eps()
        if eps is None:
            features = DenseFeatures(None)
        else:
            first = self["denselayer1"]
            unit = unit_stats(first.norm1.weight, self.num_output_features)
            features = DenseFeatures(eps, unit, lean=first.memory_efficient)
        features.append(init_features)
        for layer in self.values():
            features.append(layer(features))
        if eps is not None:
            update_running_stats([layer.norm1 for layer in self.values()], *features.stats())
        if self.return_features and self.training and torch.is_grad_enabled():
            return features
        return features.cat()


class _Transition(nn.Sequential):
    def __init__(
        self,
        num_input_features: int,
        num_output_features: int,
        act: ActFactory,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.act = act(num_input_features, inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.memory_efficient = memory_efficient

    def forward(self, x: Tensor | DenseFeatures) -> Tensor:
        lean = self.memory_efficient and self.training and torch.is_grad_enabled()
        # pool before the 1x1 conv when that is the same function: a quarter of its work
        pool = self.pool if pool_commutes(self.conv, self.pool) else None
        if isinstance(x, DenseFeatures) and x.readable_by(self.norm):
            update_running_stats([self.norm], *x.stats())
            out = read_bn_act_conv(x.normalized, self.norm, self.act, self.conv, x.unit, lean, pool)
        else:
            features = x.raw if isinstance(x, DenseFeatures) else [x]
            if lean and fusable(self.norm, self.conv):
                out = bn_act_conv(features, self.norm, self.act, self.conv, pool=pool)
            else:
                y = self.act(self.norm(cat_channels(features)))
                out = self.conv(pool(y) if pool is not None else y)
        return self.pool(out) if pool is None else out


class DenseNet(nn.Module):
    """Densely connected network.

    Args:
        growth_rate: feature maps each layer adds (k).
        block_config: layers in each dense block.
        num_init_features: feature maps of the stem.
        bn_size: bottleneck width as a multiple of k.
        bottleneck: dense layers with a 1x1 bottleneck ("B": BN-act-1x1 conv to bn_size*k,
            then BN-act-3x3 conv), or the basic BN-act-3x3 conv layer (False).
        compression: fraction of feature maps a transition keeps (0.5 in DenseNet-BC).
        drop_rate: dropout after each dense layer.
        num_classes: classifier outputs.
        stem: ``imagenet`` (7x7/s2 conv + max-pool) or ``cifar`` (3x3/s1 conv).
        memory_efficient: keep each feature map once (normalised), the bottleneck outputs and
            conv0's output; backward recomputes the concatenations, scale-and-shifts,
            activations and the stem's BN-act-pool, never a convolution.
        act: activation config (``name``, ``prelu_init``, ``prelu_per_channel``).
        conv: spatial conv config (``type``, ``kernel_size``, ``dilation``, ``inner_bn``).
        init: weight init config (``name``, ``mode``, ``distribution``).
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
        stem: str = "imagenet",
        memory_efficient: bool = False,
        act: dict[str, Any] | None = None,
        conv: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
        bottleneck: bool = True,
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
        act_cfg = {"name": "relu", **(act or {})}
        conv_cfg = {"type": "standard", **(conv or {})}
        init_cfg = {"name": "kaiming", **(init or {})}
        make_act = act_factory(**act_cfg)

        self.stem = stem
        self.memory_efficient = memory_efficient
        if stem == "imagenet":
            self.features = nn.Sequential()
            self.features.add_module(
                "conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)
            )
            self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
            self.features.add_module("act0", make_act(num_init_features, inplace=True))
            self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        elif stem == "cifar":
            self.features = nn.Sequential()
            self.features.add_module(
                "conv0", nn.Conv2d(3, num_init_features, 3, stride=1, padding=1, bias=False)
            )
        else:
            raise ValueError(f"unknown stem {stem!r}; valid choices: imagenet, cifar")

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers,
                num_features,
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
                act=make_act,
                conv=conv_cfg,
                bottleneck=bottleneck,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                block.return_features = True
                out_features = int(num_features * compression)
                self.features.add_module(
                    f"transition{i + 1}",
                    _Transition(num_features, out_features, make_act, memory_efficient),
                )
                num_features = out_features

        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.features.add_module("act5", make_act(num_features, inplace=True))
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features

        init_weights(self, act_name=act_cfg["name"], **init_cfg)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features
        if self._lean_stem():
            # keep only conv0's output; backward recomputes norm0, act0 and the pool
            x = bn_act_pool(input_conv(x, f.conv0), f.norm0, f.act0, f.pool0)
            for module in list(f.children())[4:]:
                x = module(x)
        else:
            x = f(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)

    def _lean_stem(self) -> bool:
        f = self.features
        return (
            self.stem == "imagenet"
            and self.memory_efficient
            and self.training
            and torch.is_grad_enabled()
            and shareable(f.norm0)
            and f.norm0.training
            and type(f.pool0) is nn.MaxPool2d
        )


# torchvision's old checkpoints name BN params "norm.1"/"relu.1"/"conv.1" instead of "norm1"...
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename old-style torchvision keys (``norm.1.weight`` -> ``norm1.weight``)."""
    out = {}
    for key, value in state_dict.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_pretrained(model: DenseNet, path: str | Path) -> list[str]:
    """Load a local torchvision-format state dict; returns the keys left at their init.

    A classifier of a different class count is replaced (kept at its fresh init). Any other
    mismatch is an error that names the keys, so a wrong architecture cannot load silently.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or a corrupt file
        raise RuntimeError(f"model.pretrained: cannot load {path} safely: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    state = convert_torchvision_state_dict(state)
    own = model.state_dict()
    skipped = []
    for key in ("classifier.weight", "classifier.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]
            skipped.append(key)
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    shape_errors = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shape_errors:
        raise RuntimeError(
            f"model.pretrained {path} does not match this architecture: missing keys "
            f"{missing[:8]}, unexpected keys {unexpected[:8]}, shape mismatches {shape_errors[:8]}"
        )
    model.load_state_dict(state, strict=False)
    return skipped


def _densenet(
    growth_rate: int, block_config: Sequence[int], num_init_features: int, **kwargs: Any
) -> DenseNet:
    return DenseNet(growth_rate, block_config, num_init_features, **kwargs)


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
