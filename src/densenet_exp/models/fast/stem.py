"""The ImageNet stem's memory-efficient pieces: the input convolution and BN-act-max-pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .fused import MemoryHook
from .slicing import accumulate, batch_rows, batch_slices, conv_backward
from .stats import bn_momentum, plain_conv


class _InputConv(torch.autograd.Function):
    """A convolution of the network's input, whose gradient nobody wants.

    Backward computes only the weight gradient, in batch slices (see ``SLICE_ELEMENTS``): the
    ImageNet stem's 7x7 convolution is the largest single scratch of the step on CPU (its
    weight gradient's oneDNN buffers; under emulated bf16, the step's RSS peak).
    """

    @staticmethod
    def forward(ctx, conv: nn.Conv2d, hook: MemoryHook | None, x: Tensor, w: Tensor):
        ctx.conv, ctx.hook = conv, hook
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w = ctx.saved_tensors
        grad_w = None
        for sl in batch_slices([grad_out]):
            _, g = conv_backward(
                ctx.conv, batch_rows(grad_out, sl), batch_rows(x, sl), w, input_grad=False
            )
            grad_w = accumulate(grad_w, g)
        if ctx.hook is not None:
            ctx.hook(grad_out.device)
        return None, None, None, grad_w.to(w.dtype)


def input_conv(x: Tensor, conv: nn.Module, hook: MemoryHook | None = None) -> Tensor:
    """``conv(x)`` for an ``x`` that needs no gradient (see ``_InputConv``)."""
    if not plain_conv(conv) or x.requires_grad or not conv.weight.requires_grad:
        return conv(x)
    return _InputConv.apply(conv, hook, x, conv.weight)


class _BNActPool(torch.autograd.Function):
    """The ImageNet stem's BN -> act -> max-pool, keeping only the convolution's output.

    Otherwise the BN output and the pool's int64 indices are kept: at 224 px they are the two
    largest activations of the whole network.
    """

    @staticmethod
    def forward(ctx, bn: nn.BatchNorm2d, act: nn.Module, pool: nn.MaxPool2d, x: Tensor, *params):
        w, b = params[:2]
        m = bn_momentum(bn)
        z = F.batch_norm(x, bn.running_mean, bn.running_var, w, b, True, m, bn.eps)
        out = _max_pool(act(z), pool)
        ctx.modules = (bn, act, pool)
        ctx.save_for_backward(x, w, b)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        bn, act, pool = ctx.modules
        x, w, b = ctx.saved_tensors
        if type(act) is nn.ReLU:
            return (None, None, None, *_bn_relu_pool_backward(bn, pool, grad_out, x, w, b))
        act_params = list(act.parameters())
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, w, b)]
            z = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.0, bn.eps)
            out = _max_pool(act(z), pool)
        wanted = [t for t in (*leaves, *act_params) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
        result = [next(grads) if t.requires_grad else None for t in (*leaves, *act_params)]
        return (None, None, None, *result)


def _bn_relu_pool_backward(bn, pool, grad_out: Tensor, x: Tensor, w: Tensor, b: Tensor):
    # by hand, for the two largest tensors of the network: the ReLU's gradient in place, and the
    # recomputed activation freed before BN's backward allocates its gradient (autograd would
    # hold three activation-sized tensors at the end of backward where this holds two)
    with torch.no_grad():
        z, mean, invstd = torch.native_batch_norm(x, w, b, None, None, True, 0.0, bn.eps)
        z.relu_()
        _, indices = F.max_pool2d(
            z, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True
        )
        grad_z = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, z, _pair(pool.kernel_size), _pair(pool.stride),
            _pair(pool.padding), _pair(pool.dilation), pool.ceil_mode, indices,
        )  # fmt: skip
        del indices
        torch.ops.aten.threshold_backward.grad_input(grad_z, z, 0, grad_input=grad_z)
        del z
        mask = [x.requires_grad, w.requires_grad, b.requires_grad]
        grads = torch.ops.aten.native_batch_norm_backward(
            grad_z, x, w, None, None, mean, invstd, True, bn.eps, mask
        )
    return grads


def _max_pool(y: Tensor, pool: nn.MaxPool2d) -> Tensor:
    return F.max_pool2d(
        y, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
    )


def bn_act_pool(x: Tensor, bn: nn.BatchNorm2d, act: nn.Module, pool: nn.MaxPool2d) -> Tensor:
    """``pool(act(bn(x)))`` in training mode, keeping only ``x`` for backward."""
    bn.num_batches_tracked.add_(1)
    return _BNActPool.apply(bn, act, pool, x, bn.weight, bn.bias, *act.parameters())
