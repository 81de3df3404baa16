"""The fast implementation of the DenseNet modules: same parameters, less work, less memory.

Each class subclasses its plain counterpart in ``models/densenet.py`` and keeps its ``__init__``,
so the parameters, buffers and their names are the plain model's (and torchvision's); only
``forward`` differs. Outputs, gradients and running statistics equal the plain model's to float
rounding (tested). What it does differently:

- every feature map of a dense block is batch-normalised once, when it is produced, and each
  reader's BN only applies its scale and shift (``fused``: exact in training mode);
- transitions average-pool before their 1x1 convolution (both linear: a quarter of the work);
- ``memory_efficient`` keeps each map once, normalised, and recomputes concatenations,
  scale-and-shifts and activations in backward, never a convolution; on CPU the readers run in
  batch slices; the ImageNet stem's BN-act-pool is recomputed too.

Layers it does not know (the basic, non-bottleneck layer; modules a user brings) run the plain
way inside a fast block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...config import Stem
from .. import densenet as plain
from ..recompute import recomputed, recomputes
from .fused import MemoryHook, bn_act_conv, read_bn_act_conv
from .stats import (
    cat_channels,
    fusable,
    normalize,
    pool_commutes,
    shareable,
    unbiased_var,
    unit_stats,
    update_running_stats,
)
from .stem import bn_act_pool, input_conv

log = logging.getLogger(__name__)
CHANNELS_LAST = torch.channels_last


class DenseFeatures:
    """The feature maps of a dense block so far, as its layers and its transition read them.

    In training with plain BNs of one eps, each map is also batch-normalised once as it arrives
    (``normalized``); the readers then only scale and shift (see ``fused``). ``raw`` serves the
    other cases (eval, synchronized BN, layers that run the plain way).
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


class _DenseLayer(plain._DenseLayer):
    """The bottleneck layer, reading the block's shared statistics where it can."""

    memory_hook: MemoryHook | None = None  # DenseNet.set_memory_hook

    def forward(self, inputs: Tensor | Sequence[Tensor] | DenseFeatures) -> Tensor:
        lean = recomputes(self)
        out = self._features(inputs, lean)
        if self.drop_rate > 0:
            out = nn.functional.dropout(out, p=self.drop_rate, training=self.training)
        if lean and self.memory_hook is not None:
            self.memory_hook(out.device)  # this layer's forward transients are freed
        return out

    def _features(self, inputs: Tensor | Sequence[Tensor] | DenseFeatures, lean: bool) -> Tensor:
        if isinstance(inputs, DenseFeatures) and inputs.normalized is not None:
            # the block normalised each feature map once and keeps norm1's running stats
            hook = self.memory_hook
            h = read_bn_act_conv(
                inputs.normalized, self.norm1, self.act1, self.conv1, inputs.unit, lean, None, hook
            )
            if lean and fusable(self.norm2, self.conv2):
                return bn_act_conv([h], self.norm2, self.act2, self.conv2, hook=hook)
            return self.conv2(self.act2(self.norm2(h)))
        features = inputs.raw if isinstance(inputs, DenseFeatures) else plain.as_list(inputs)
        if not lean:
            return self.conv2(self._bn_act_conv_bn_act(*features))
        if fusable(self.norm1, self.conv1):
            # keep only the inputs of each BN-act-conv; backward recomputes BN and act, not convs
            h = bn_act_conv(features, self.norm1, self.act1, self.conv1, hook=self.memory_hook)
            if fusable(self.norm2, self.conv2):
                return bn_act_conv([h], self.norm2, self.act2, self.conv2, hook=self.memory_hook)
            # dsconv: depthwise -> BN -> pointwise stays a module
            return self.conv2(self.act2(self.norm2(h)))
        # synchronized BN needs its collectives: recompute through the modules
        return self.conv2(recomputed(self, self._bn_act_conv_bn_act, *features))

    def _bn_act_conv_bn_act(self, *inputs: Tensor) -> Tensor:
        """concat -> BN -> act -> 1x1 conv -> BN -> act: the activations that grow with depth."""
        x = cat_channels(inputs)
        return self.act2(self.norm2(self.conv1(self.act1(self.norm1(x)))))


class _DenseBlock(plain._DenseBlock):
    bottleneck_layer = _DenseLayer

    def __init__(self, *args: Any, return_features: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a block followed by a transition hands it the features, without their concatenation
        # being stored (and, in training, already normalised)
        self.return_features = return_features

    def _shared_eps(self) -> float | None:
        """The eps of the layers' first BNs when they can share per-feature statistics."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        if not all(type(layer) is _DenseLayer for layer in self.values()):
            return None  # a layer that runs the plain way reads the raw maps
        norms = [layer.norm1 for layer in self.values()]
        eps = norms[0].eps
        if all(shareable(bn) and bn.training and bn.eps == eps for bn in norms):
            return eps
        return None

    def forward(self, init_features: Tensor) -> Tensor | DenseFeatures:  # type: ignore[override]
        eps = self._shared_eps()
        if eps is None:
            features = DenseFeatures(None)
        else:
            first = self["denselayer1"]
            unit = unit_stats(first.norm1.weight, self.num_output_features)
            features = DenseFeatures(eps, unit, lean=first.memory_efficient)
        features.append(init_features)
        for layer in self.values():
            fast = type(layer) is _DenseLayer
            features.append(layer(features if fast else list(features.raw)))
        if eps is not None:
            update_running_stats([layer.norm1 for layer in self.values()], *features.stats())
        if self.return_features and self.training and torch.is_grad_enabled():
            return features
        return features.cat()


class _Transition(plain._Transition):
    """Pools before its 1x1 conv (the same linear map on a quarter of the pixels)."""

    memory_hook: MemoryHook | None = None  # DenseNet.set_memory_hook

    def __init__(
        self,
        num_input_features: int,
        num_output_features: int,
        act: Any,
        norm: Any = nn.BatchNorm2d,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(num_input_features, num_output_features, act, norm)
        self.memory_efficient = memory_efficient

    def forward(self, x: Tensor | DenseFeatures) -> Tensor:  # type: ignore[override]
        lean = recomputes(self)
        pool = self.pool if pool_commutes(self.conv, self.pool) else None
        if isinstance(x, DenseFeatures) and x.readable_by(self.norm):
            update_running_stats([self.norm], *x.stats())
            out = read_bn_act_conv(
                x.normalized, self.norm, self.act, self.conv, x.unit, lean, pool, self.memory_hook
            )
        else:
            features = x.raw if isinstance(x, DenseFeatures) else [x]
            if lean and fusable(self.norm, self.conv):
                out = bn_act_conv(
                    features, self.norm, self.act, self.conv, pool=pool, hook=self.memory_hook
                )
            else:
                y = self.act(self.norm(cat_channels(features)))
                out = self.conv(pool(y) if pool is not None else y)
        return self.pool(out) if pool is None else out


# the ImageNet stem's modules in ``features``, run above as one fused step
IMAGENET_STEM = ("conv0", "norm0", "act0", "pool0")


class DenseNet(plain.DenseNet):
    """The same network as ``models.densenet.DenseNet`` (same arguments and parameters), faster."""

    memory_hook: MemoryHook | None = None  # set_memory_hook

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        blocks = [m for m in self.features.children() if isinstance(m, _DenseBlock)]
        plain_layers = sorted(
            {
                type(layer).__name__
                for block in blocks
                for layer in block.values()
                if type(layer) is not _DenseLayer
            }
        )
        if plain_layers:
            log.info(
                "model.impl=fast: %s layers run the plain way (no shared BN statistics)",
                ", ".join(plain_layers),
            )

    def _block(
        self, num_layers: int, num_features: int, layer_options: dict[str, Any], last: bool
    ) -> nn.Module:
        return _DenseBlock(num_layers, num_features, return_features=not last, **layer_options)

    def _transition(
        self, num_features: int, out_features: int, layer_options: dict[str, Any]
    ) -> nn.Module:
        act, norm = layer_options["act"], layer_options["norm"]
        lean = layer_options["memory_efficient"]
        return _Transition(num_features, out_features, act, norm, memory_efficient=lean)

    def set_memory_hook(self, hook: MemoryHook | None) -> None:
        """Have the memory-efficient layers call ``hook(device)`` each time they have freed their
        transients, forward and backward (the engine hands in ``heap.HeapTrimmer`` on CPU)."""
        for m in self.modules():
            if isinstance(m, _DenseLayer | _Transition | DenseNet):
                m.memory_hook = hook

    def forward(self, x: Tensor) -> Tensor:
        x = self._imagenet_features(x) if self.stem == Stem.imagenet else self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)

    def _imagenet_features(self, x: Tensor) -> Tensor:
        f = self.features
        # On CPU, max-pooling is ~13x slower on channels-first maps than on channels-last ones
        # (torch 2.14, 32x64x64x64 with indices: 54 vs 4 ms), and the memory-efficient stem pools
        # twice (forward, and again in backward): the stem runs channels-last from its small
        # input on, and hands the first block the layout it was given.
        back = (
            x.device.type == "cpu"
            and type(f.norm0) is nn.BatchNorm2d
            and not x.is_contiguous(memory_format=CHANNELS_LAST)
        )
        if back:
            x = x.contiguous(memory_format=CHANNELS_LAST)
        if self._lean_stem():
            # keep only conv0's output; backward recomputes norm0, act0 and the pool
            x = bn_act_pool(input_conv(x, f.conv0, self.memory_hook), f.norm0, f.act0, f.pool0)
        else:
            x = f.pool0(f.act0(f.norm0(f.conv0(x))))
        if back:
            x = x.contiguous()
        for name, module in f.named_children():
            if name not in IMAGENET_STEM:  # the blocks, transitions and final norm and act
                x = module(x)
        return x

    def _lean_stem(self) -> bool:
        f = self.features
        return (
            recomputes(self)
            and shareable(f.norm0)
            and f.norm0.training
            and type(f.pool0) is nn.MaxPool2d
        )
