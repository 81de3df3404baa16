"""BN -> activation -> convolution that keeps only its input: the memory-efficient dense layer.

A DenseNet layer's activations grow with depth because every layer normalises the concatenation of
all earlier features and stores that normalised copy for its convolution's weight gradient.
torchvision's ``memory_efficient`` recomputes concat-BN-ReLU-conv in backward, convolution included.
Here backward recomputes only the cheap, memory-bound part (concat, BN with the batch statistics,
activation) and hands it straight to the convolution's backward, so no convolution runs twice and
nothing but the inputs is kept between forward and backward.

Used for the 1x1 bottleneck, the 3x3 convolution and the transitions when the BN is a plain
``nn.BatchNorm2d``; synchronized BN (whose statistics need collectives) keeps the module path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _BNActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bn: nn.BatchNorm2d, act: nn.Module, conv: nn.Conv2d, n: int, *args: Tensor):
        inputs, (bn_w, bn_b, conv_w) = args[:n], args[n : n + 3]
        x = torch.cat(inputs, 1) if n > 1 else inputs[0]
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        # native_batch_norm also returns the batch mean and 1/std: backward reuses them instead of
        # reducing over the batch again
        z, mean, invstd = torch.native_batch_norm(
            x, bn_w, bn_b, bn.running_mean, bn.running_var, True, momentum, bn.eps
        )
        out = F.conv2d(act(z), conv_w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.modules, ctx.n = (bn, act, conv), n
        ctx.sizes = [t.shape[1] for t in inputs]
        ctx.save_for_backward(*inputs, bn_w, bn_b, conv_w, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        bn, act, conv = ctx.modules
        n, saved = ctx.n, ctx.saved_tensors
        inputs, (bn_w, bn_b, conv_w, mean, invstd) = saved[:n], saved[n:]
        device, enabled, dtype = ctx.autocast
        x = torch.cat(inputs, 1) if n > 1 else inputs[0]
        # normalise with the saved batch statistics: one elementwise pass (eval-mode BN kernel)
        var = invstd.pow(-2).sub_(bn.eps)
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            z = F.batch_norm(x, mean, var, bn_w, bn_b, False, 0.0, bn.eps)
        relu = type(act) is nn.ReLU
        act_params = [p for p in act.parameters() if p.requires_grad]
        if relu:
            y = z.clamp_min_(0.0)
        else:
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                z = z.detach().requires_grad_(True)
                y = act(z)
        gdtype = grad_out.dtype
        grad_y, grad_conv_w, _ = torch.ops.aten.convolution_backward(
            grad_out,
            y.detach().to(gdtype),
            conv_w.to(gdtype),
            None,
            list(conv.stride),
            list(conv.padding),
            list(conv.dilation),
            False,
            [0, 0],
            conv.groups,
            [True, conv_w.requires_grad, False],
        )
        grad_y = grad_y.to(y.dtype)
        if relu:  # in place: one feature map less at the peak of backward
            grad_z = grad_y.masked_fill_(y <= 0, 0.0)
            act_grads: tuple[Tensor, ...] = ()
        else:
            grad_z, *act_grads = torch.autograd.grad(y, [z, *act_params], grad_y)
        del y, z, grad_y  # free the recomputed activations before BN's backward allocates
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_z.to(x.dtype) if grad_z.dtype != x.dtype else grad_z,
            x,
            bn_w,
            None,
            None,
            mean,
            invstd,
            True,
            bn.eps,
            [any(t.requires_grad for t in inputs), bn_w.requires_grad, bn_b.requires_grad],
        )
        pieces = grad_x.split(ctx.sizes, 1) if grad_x is not None else [None] * n
        result: list[Tensor | None] = [None, None, None, None]
        result += [g if t.requires_grad else None for g, t in zip(pieces, inputs)]
        result += [grad_w, grad_b]
        result.append(grad_conv_w.to(conv_w.dtype) if grad_conv_w is not None else None)
        # PReLU slopes: inputs of apply() too, so autograd (and DDP's hooks) see their gradient
        grads = iter(act_grads)
        result += [next(grads) if p.requires_grad else None for p in act.parameters()]
        return tuple(result)


def fusable(bn: nn.Module, conv: nn.Module) -> bool:
    """Plain BatchNorm2d followed by a bias-free, zero-padded Conv2d."""
    return (
        type(bn) is nn.BatchNorm2d
        and bn.affine
        and bn.track_running_stats
        and type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def bn_act_conv(
    inputs: Sequence[Tensor], bn: nn.BatchNorm2d, act: nn.Module, conv: nn.Conv2d
) -> Tensor:
    """``conv(act(bn(cat(inputs))))`` in training mode, keeping only ``inputs`` for backward."""
    bn.num_batches_tracked.add_(1)
    return _BNActConv.apply(
        bn, act, conv, len(inputs), *inputs, bn.weight, bn.bias, conv.weight, *act.parameters()
    )
