"""The BatchNorm arithmetic of a dense block, computed once per feature map instead of per layer.

In training mode a BatchNorm normalises each channel with that channel's batch statistics. In a
dense block every feature map is read by all later layers' first BN (and by the transition or the
final norm), so the statistics of a channel are the same for every reader: torchvision recomputes
them at each of the ~L readers, concatenation included. Here each feature map is normalised once
when it is produced (``normalize``: statistics, x_hat, and in backward the gradient through the
statistics, once); each reader only applies its own scale and shift, ``x_hat * w + b``, as an
eval-mode BN with mean 0, variance 1 and eps 0 (exact: invstd is 1/sqrt(1)). The readers' running
statistics get the same batch statistics a per-layer BN would have used (``update_running_stats``).
The result equals the per-layer BNs up to float rounding; it saves one read of every concatenation
in forward and the statistics' share of every BN backward.

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HALF = (torch.float16, torch.bfloat16)


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors concatenated along channels (a single one as it is, without a copy)."""
    return torch.cat(list(tensors), 1) if len(tensors) > 1 else tensors[0]


def shareable(bn: nn.Module) -> bool:
    """A BN whose training-mode output is an affine map of its input's batch-normalised values."""
    return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats


def plain_conv(conv: nn.Module) -> bool:
    """A bias-free, zero-padded Conv2d: what the hand-written backward passes compute."""
    return (
        type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def fusable(bn: nn.Module, conv: nn.Module) -> bool:
    """Plain BatchNorm2d followed by a bias-free, zero-padded Conv2d."""
    return shareable(bn) and plain_conv(conv)


class _Normalize(torch.autograd.Function):
    """x -> (x - mean) / sqrt(var + eps) with batch statistics; keeps only its output."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float):
        # statistics in fp32 whatever the activations' dtype (what BN does under autocast)
        xf = x.float() if x.dtype in _HALF else x
        x_hat, mean, invstd = torch.native_batch_norm(xf, None, None, None, None, True, 0.0, eps)
        x_hat = x_hat.to(x.dtype)
        ctx.save_for_backward(x_hat, invstd)
        ctx.mark_non_differentiable(mean, invstd)
        return x_hat, mean, invstd

    @staticmethod
    def backward(ctx, grad_x_hat: Tensor, _mean: Tensor, _invstd: Tensor):
        x_hat, invstd = ctx.saved_tensors
        dtype = grad_x_hat.dtype
        g = grad_x_hat.float() if dtype in _HALF else grad_x_hat
        xh = x_hat.to(g.dtype)
        unit = torch.ones_like(invstd)
        # dx = invstd * (g - mean(g) - x_hat * mean(g * x_hat)): BN's backward taking x_hat as an
        # input of mean 0 and invstd 1, with invstd as the "weight" (needs x_hat, not x)
        (grad,) = torch.ops.aten.native_batch_norm_backward(
            g,
            xh,
            invstd,
            None,
            None,
            torch.zeros_like(invstd),
            unit,
            True,
            0.0,
            [True, False, False],
        )[:1]
        return grad.to(dtype), None


def normalize(x: Tensor, eps: float, keep_input: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-normalised ``x`` (no affine), its channel means and 1/sqrt(var + eps).

    ``keep_input``: let autograd keep ``x`` for backward (one C++ op, the fastest); otherwise only
    the normalised output is kept, which the memory-efficient readers keep anyway. Half inputs on
    CPU take the second path too: their statistics would come back in half precision.
    """
    if keep_input and (x.dtype not in _HALF or x.is_cuda):
        return torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
    return _Normalize.apply(x, eps)


def unbiased_var(invstd: Tensor, eps: float, n: int) -> Tensor:
    """The unbiased variance BN keeps in running_var, from the invstd it normalised with."""
    return (invstd.float().pow(-2) - eps).clamp_min_(0) * (n / max(n - 1, 1))


def unit_affine(x_hat: Tensor, w: Tensor, b: Tensor, unit: tuple[Tensor, Tensor]) -> Tensor:
    # eval-mode BN with mean 0, var 1, eps 0 is exactly x_hat * w + b, in one fused kernel both
    # ways (its backward gives dx_hat = dy * w and the weight and bias sums in one pass)
    return F.batch_norm(x_hat, unit[0], unit[1], w, b, False, 0.0, 0.0)


def unit_stats(like: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Zeros and ones of ``like``'s dtype: the mean and variance that make BN a pure affine."""
    return like.new_zeros(n), like.new_ones(n)


def affine_act(
    x_hats: Sequence[Tensor], bn: nn.BatchNorm2d, act: nn.Module, unit: tuple[Tensor, Tensor]
) -> Tensor:
    """``act(bn(cat(x)))`` in training mode, given the already normalised parts of ``x``."""
    x = cat_channels(x_hats)
    c = x.shape[1]
    return act(unit_affine(x, bn.weight, bn.bias, (unit[0][:c], unit[1][:c])))


def bn_momentum(bn: nn.BatchNorm2d) -> float:
    """The factor BN moves its running statistics by (None: cumulative average)."""
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def update_running_stats(readers: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor) -> None:
    """Move each reader's running statistics as its own training-mode BN would have.

    ``mean``/``var`` hold the batch statistics of all channels in order; a reader of C channels
    takes the first C. One foreach update per momentum, instead of a few small ops per layer.
    """
    if not readers:
        return
    with torch.no_grad():
        torch._foreach_add_([bn.num_batches_tracked for bn in readers], 1)
        groups: dict[float, list[nn.BatchNorm2d]] = {}
        for bn in readers:
            groups.setdefault(bn_momentum(bn), []).append(bn)
        for m, bns in groups.items():
            c = [bn.num_features for bn in bns]
            dt = bns[0].running_mean.dtype
            torch._foreach_lerp_([bn.running_mean for bn in bns], [mean[:n].to(dt) for n in c], m)
            torch._foreach_lerp_([bn.running_var for bn in bns], [var[:n].to(dt) for n in c], m)


def pool_commutes(conv: nn.Module, pool: nn.Module) -> bool:
    """``conv(pool(y)) == pool(conv(y))``: a 1x1 convolution and an unpadded average pool.

    Both are linear, one across channels at each pixel, the other across pixels of each channel,
    so their order is free; pooling first runs the convolution on a quarter of the pixels (the
    transitions' convolutions are 10.9% of densenet121's convolution multiply-adds).
    """
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and type(pool) is nn.AvgPool2d
        and pool.padding in (0, (0, 0))
        and pool.divisor_override is None
    )


def avg_pool(y: Tensor, pool: nn.AvgPool2d) -> Tensor:
    return F.avg_pool2d(y, pool.kernel_size, pool.stride, 0, pool.ceil_mode, pool.count_include_pad)


def act_conv(z: Tensor, act: nn.Module, conv: nn.Conv2d, pool: nn.AvgPool2d | None, w: Tensor):
    y = act(z)
    if pool is not None:
        y = avg_pool(y, pool)
    return F.conv2d(y, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
