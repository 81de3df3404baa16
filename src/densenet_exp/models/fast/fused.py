"""The memory-efficient reader of a dense block: BN-act-conv that keeps only its inputs.

``bn_act_conv`` keeps only its inputs, and backward recomputes the concatenation, affine and
activation (never a convolution) and hands them straight to the convolution's backward.
torchvision's ``memory_efficient`` recomputes concat-BN-ReLU-conv instead. Synchronized BN (whose
statistics need collectives) keeps the module path. The shared statistics it reads are
``stats``'s; the batch slices on CPU are ``slicing``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .slicing import accumulate, batch_rows, batch_slices, conv_backward, memory_format_of
from .stats import act_conv, affine_act, avg_pool, bn_momentum, cat_channels, fusable, unit_affine

# Called with the device where a memory-efficient step has just freed its transients (forward
# and backward); whoever trains hands one in (the engine: the CPU heap trimmer, ``heap.py``).
MemoryHook = Callable[[torch.device], object]


class _BNActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bn, act, conv, pool, unit, hook, n: int, *args):
        inputs, (bn_w, bn_b, conv_w) = args[:n], args[n : n + 3]
        c = sum(t.shape[1] for t in inputs)
        if unit is not None:  # inputs already normalised; running stats are the caller's
            unit = (unit[0][:c], unit[1][:c])
            # per sample: in batch slices, like the backward (see SLICE_ELEMENTS)

            def slice_out(sl: slice) -> Tensor:  # one slice's concatenation lives at a time
                x = cat_channels([batch_rows(t, sl) for t in inputs])
                return act_conv(unit_affine(x, bn_w, bn_b, unit), act, conv, pool, conv_w)

            outs = [slice_out(sl) for sl in batch_slices(inputs)]
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
        else:
            m = bn_momentum(bn)
            x = cat_channels(inputs)
            z = F.batch_norm(x, bn.running_mean, bn.running_var, bn_w, bn_b, True, m, bn.eps)
            out = act_conv(z, act, conv, pool, conv_w)
        device = inputs[0].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.modules, ctx.n, ctx.unit, ctx.hook = (bn, act, conv, pool), n, unit, hook
        ctx.save_for_backward(*inputs, bn_w, bn_b, conv_w)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        act = ctx.modules[1]
        n, saved = ctx.n, ctx.saved_tensors
        inputs, (bn_w, bn_b, conv_w) = saved[:n], saved[n : n + 3]
        if type(act) is nn.ReLU:
            grads = _relu_backward(ctx, grad_out, inputs, bn_w, bn_b, conv_w)
        else:
            grads = _autograd_backward(ctx, grad_out, inputs, bn_w, bn_b, conv_w)
        if ctx.hook is not None:
            ctx.hook(grad_out.device)  # this backward's transients are freed (see MemoryHook)
        return (None,) * 7 + grads


def _relu_backward(ctx, grad_out, inputs, bn_w, bn_b, conv_w) -> tuple:
    # ReLU: every gradient written by hand, in place where possible, so backward holds at most
    # three tensors the size of the concatenation (x, z, dz) where autograd would hold five
    if ctx.unit is None:
        return _relu_backward_batch_stats(ctx, grad_out, inputs, bn_w, bn_b, conv_w)
    _, _, conv, pool = ctx.modules
    slices = batch_slices(inputs)
    want_x = inputs[0].requires_grad
    mask = [False, bn_w.requires_grad, bn_b.requires_grad]
    grad_x, sums = None, [None, None, None]  # dL/d(bn_w, bn_b, conv_w), accumulated in fp32
    with torch.no_grad():
        for sl in slices:
            x = cat_channels([batch_rows(t, sl) for t in inputs])
            z = unit_affine(x, bn_w, bn_b, ctx.unit).relu_()
            grad_z, grad_conv_w = _relu_conv_backward(
                conv, pool, batch_rows(grad_out, sl), z, conv_w
            )
            del z
            _, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
                grad_z, x, bn_w, *ctx.unit, None, None, False, 0.0, mask
            )
            del x
            sums = [accumulate(t, g) for t, g in zip(sums, (grad_w, grad_b, grad_conv_w))]
            if not want_x:
                continue
            w = bn_w.view(1, -1, 1, 1)
            if len(slices) == 1:  # d(x*w + b)/dx = w: scale dz in place, the sums are taken
                grad_x = grad_z.mul_(w)
            else:
                if grad_x is None:
                    shape = (inputs[0].shape[0], *grad_z.shape[1:])
                    fmt = memory_format_of(grad_z)
                    grad_x = torch.empty(
                        shape, dtype=grad_z.dtype, device=grad_z.device, memory_format=fmt
                    )
                torch.mul(grad_z, w, out=grad_x[sl])
    params = (bn_w, bn_b, conv_w)
    grad_w, grad_b, grad_conv_w = (
        g.to(p.dtype) if g is not None else None for g, p in zip(sums, params)
    )
    return (*_split_grad(grad_x, inputs), grad_w, grad_b, grad_conv_w)


def _relu_conv_backward(conv, pool, grad_out: Tensor, z: Tensor, conv_w: Tensor):
    """dL/dz (not yet through the ReLU) and dL/dw of ``conv(pool(z))`` for ReLU'd ``z``;
    dL/dz is then taken through the ReLU in place."""
    if pool is None:
        grad_z, grad_conv_w = conv_backward(conv, grad_out, z, conv_w)
    else:
        grad_p, grad_conv_w = conv_backward(conv, grad_out, avg_pool(z, pool), conv_w)
        # the pool's backward only reads z's shape and dtype (the cast is a no-op unless the
        # conv ran in another dtype than the activations)
        grad_z = torch.ops.aten.avg_pool2d_backward(
            grad_p, z.to(grad_p.dtype), pool.kernel_size, pool.stride, 0, pool.ceil_mode,
            pool.count_include_pad, None,
        )  # fmt: skip
        del grad_p
    # in place: threshold_backward may write over its own input (masked_fill_ is 10x slower)
    torch.ops.aten.threshold_backward.grad_input(grad_z, z, 0, grad_input=grad_z)
    return grad_z, grad_conv_w


def _split_grad(grad_x: Tensor | None, inputs: Sequence[Tensor]) -> list[Tensor | None]:
    """The gradient of the concatenation, as each input's part in that input's dtype."""
    sizes = [t.shape[1] for t in inputs]
    parts = grad_x.split(sizes, 1) if grad_x is not None else [None] * len(inputs)
    return [
        g.to(t.dtype) if g is not None and t.requires_grad else None for g, t in zip(parts, inputs)
    ]


def _relu_backward_batch_stats(ctx, grad_out, inputs, bn_w, bn_b, conv_w) -> tuple:
    # the BN's own batch statistics couple the samples: the whole batch at once
    bn, _, conv, pool = ctx.modules
    with torch.no_grad():
        x = cat_channels(inputs)
        z, mean, invstd = torch.native_batch_norm(x, bn_w, bn_b, None, None, True, 0.0, bn.eps)
        z.relu_()
        grad_z, grad_conv_w = _relu_conv_backward(conv, pool, grad_out, z, conv_w)
        del z
        mask = [True, bn_w.requires_grad, bn_b.requires_grad]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_z, x, bn_w, None, None, mean, invstd, True, bn.eps, mask
        )
    del x
    return (*_split_grad(grad_x, inputs), grad_w, grad_b, grad_conv_w)


def _autograd_backward(ctx, grad_out, inputs, bn_w, bn_b, conv_w) -> tuple:
    bn, act, conv, pool = ctx.modules
    device, enabled, dtype = ctx.autocast
    with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
        xs = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        w = bn_w.detach().requires_grad_(bn_w.requires_grad)
        b = bn_b.detach().requires_grad_(bn_b.requires_grad)
        x = cat_channels(xs)
        # batch statistics again unless shared; running stats were updated once, in forward
        if ctx.unit is not None:
            z = unit_affine(x, w, b, ctx.unit)
        else:
            z = F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
        y = act(z)
        if pool is not None:
            y = avg_pool(y, pool)
    grad_y, grad_conv_w = conv_backward(conv, grad_out, y.detach(), conv_w)
    act_params = [p for p in act.parameters() if p.requires_grad]
    wanted = [t for t in (*xs, w, b) if t.requires_grad] + act_params
    grads = iter(torch.autograd.grad(y, wanted, grad_y.to(y.dtype)))
    result = [next(grads) if t.requires_grad else None for t in (*xs, w, b)]
    result.append(grad_conv_w)
    # PReLU slopes: inputs of apply() too, so autograd (and DDP's hooks) see their gradient
    result += [next(grads) if p.requires_grad else None for p in act.parameters()]
    return tuple(result)


def bn_act_conv(
    inputs: Sequence[Tensor],
    bn: nn.BatchNorm2d,
    act: nn.Module,
    conv: nn.Conv2d,
    unit: tuple[Tensor, Tensor] | None = None,
    pool: nn.AvgPool2d | None = None,
    hook: MemoryHook | None = None,
) -> Tensor:
    """``conv(act(bn(cat(inputs))))`` in training mode, keeping only ``inputs`` for backward.

    ``unit`` (``unit_stats``): the inputs are already normalised (``normalize``) and the caller
    updates the running statistics; otherwise this BN computes batch statistics and updates its own.
    ``pool``: an average pool between act and conv (``pool_commutes``). ``hook``: called after
    the backward.
    """
    if unit is None:
        bn.num_batches_tracked.add_(1)
    return _BNActConv.apply(
        bn, act, conv, pool, unit, hook, len(inputs), *inputs, bn.weight, bn.bias, conv.weight,
        *act.parameters(),
    )  # fmt: skip


def read_bn_act_conv(
    x_hats: Sequence[Tensor],
    bn: nn.BatchNorm2d,
    act: nn.Module,
    conv: nn.Module,
    unit: tuple[Tensor, Tensor],
    lean: bool,
    pool: nn.AvgPool2d | None = None,
    hook: MemoryHook | None = None,
) -> Tensor:
    """``conv(act(bn(cat(x))))`` reading normalised feature maps; ``lean``: keep only them.

    ``pool``: an average pool between act and conv (``pool_commutes``).
    """
    if lean and fusable(bn, conv):
        return bn_act_conv(x_hats, bn, act, conv, unit, pool, hook)
    y = affine_act(x_hats, bn, act, unit)
    return conv(pool(y) if pool is not None else y)
