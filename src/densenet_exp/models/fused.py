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
        z = F.batch_norm(x, bn.running_mean, bn.running_var, bn_w, bn_b, True, momentum, bn.eps)
        out = F.conv2d(act(z), conv_w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.modules, ctx.n = (bn, act, conv), n
        ctx.save_for_backward(*inputs, bn_w, bn_b, conv_w)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        bn, act, conv = ctx.modules
        n, saved = ctx.n, ctx.saved_tensors
        inputs, (bn_w, bn_b, conv_w) = saved[:n], saved[n : n + 3]
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            xs = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            w = bn_w.detach().requires_grad_(bn_w.requires_grad)
            b = bn_b.detach().requires_grad_(bn_b.requires_grad)
            x = torch.cat(xs, 1) if n > 1 else xs[0]
            # batch statistics again; running stats were updated once, in forward
            y = act(F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps))
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
        act_params = [p for p in act.parameters() if p.requires_grad]
        wanted = [t for t in (*xs, w, b) if t.requires_grad] + act_params
        grads = iter(torch.autograd.grad(y, wanted, grad_y.to(y.dtype)))
        result: list[Tensor | None] = [None, None, None, None]
        result += [next(grads) if t.requires_grad else None for t in (*xs, w, b)]
        result.append(grad_conv_w.to(conv_w.dtype) if grad_conv_w is not None else None)
        # PReLU slopes: inputs of apply() too, so autograd (and DDP's hooks) see their gradient
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
