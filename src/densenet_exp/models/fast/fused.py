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

``bn_act_conv`` is the memory-efficient reader: it keeps only its inputs, and backward recomputes
the concatenation, affine and activation (never a convolution) and hands them straight to the
convolution's backward. torchvision's ``memory_efficient`` recomputes concat-BN-ReLU-conv instead.
Synchronized BN (whose statistics need collectives) keeps the module path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .. import heap

_HALF = (torch.float16, torch.bfloat16)


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors concatenated along channels (a single one as it is, without a copy)."""
    return torch.cat(list(tensors), 1) if len(tensors) > 1 else tensors[0]


def shareable(bn: nn.Module) -> bool:
    """A BN whose training-mode output is an affine map of its input's batch-normalised values."""
    return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats


def _plain_conv(conv: nn.Module) -> bool:
    """A bias-free, zero-padded Conv2d: what the hand-written backward passes compute."""
    return (
        type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def fusable(bn: nn.Module, conv: nn.Module) -> bool:
    """Plain BatchNorm2d followed by a bias-free, zero-padded Conv2d."""
    return shareable(bn) and _plain_conv(conv)


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


def _affine(x_hat: Tensor, w: Tensor, b: Tensor, unit: tuple[Tensor, Tensor]) -> Tensor:
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
    return act(_affine(x, bn.weight, bn.bias, (unit[0][:c], unit[1][:c])))


def _momentum(bn: nn.BatchNorm2d) -> float:
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
            groups.setdefault(_momentum(bn), []).append(bn)
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


def _avg_pool(y: Tensor, pool: nn.AvgPool2d) -> Tensor:
    return F.avg_pool2d(y, pool.kernel_size, pool.stride, 0, pool.ceil_mode, pool.count_include_pad)


def _act_conv(z: Tensor, act: nn.Module, conv: nn.Conv2d, pool: nn.AvgPool2d | None, w: Tensor):
    y = act(z)
    if pool is not None:
        y = _avg_pool(y, pool)
    return F.conv2d(y, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class _BNActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bn, act, conv, pool, unit, n: int, *args):
        inputs, (bn_w, bn_b, conv_w) = args[:n], args[n : n + 3]
        c = sum(t.shape[1] for t in inputs)
        if unit is not None:  # inputs already normalised; running stats are the caller's
            unit = (unit[0][:c], unit[1][:c])
            # per sample: in batch slices, like the backward (see SLICE_ELEMENTS)
            outs = [
                _act_conv(_affine(cat_channels([_rows(t, sl) for t in inputs]), bn_w, bn_b, unit),
                          act, conv, pool, conv_w)
                for sl in _batch_slices(inputs)
            ]  # fmt: skip
            out = torch.cat(outs) if len(outs) > 1 else outs[0]
        else:
            m = _momentum(bn)
            x = cat_channels(inputs)
            z = F.batch_norm(x, bn.running_mean, bn.running_var, bn_w, bn_b, True, m, bn.eps)
            out = _act_conv(z, act, conv, pool, conv_w)
        device = inputs[0].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.modules, ctx.n, ctx.unit = (bn, act, conv, pool), n, unit
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
        heap.release_if_slack(grad_out.device)
        return (None,) * 6 + grads


def _conv_backward(
    conv: nn.Conv2d, grad_out: Tensor, y: Tensor, conv_w: Tensor, input_grad: bool = True
):
    """dL/dy and dL/dw of ``conv(y)``, in grad_out's dtype (what autocast ran the conv in)."""
    gdtype = grad_out.dtype
    grad_y, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_out,
        y.to(gdtype),
        conv_w.to(gdtype),
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        False,
        [0, 0],
        conv.groups,
        [input_grad, conv_w.requires_grad, False],
    )
    return grad_y, grad_w.to(conv_w.dtype) if grad_w is not None else None


# Readers of already normalised maps (``unit``) run in batch slices of about this many elements of
# input, forward and ReLU backward: every step (affine, activation, pool, convolution and their
# backward) is per sample except the weight gradients, which are summed over the slices. On CPU,
# the whole-batch transients of the first dense block (concatenation, activation, their
# gradient, oneDNN's reordered copies inside the convolution's backward: ~150 MB per layer at
# densenet121, 128 px, batch 32) are allocated and freed layer after layer, each a little larger
# than the last, and glibc keeps the holes they leave in its heap. Slicing took the memory-
# efficient mode's peak RSS from 790-905 MB to 680-760 MB at the same speed (benchmarks/
# RESULTS.md). CUDA's caching allocator reuses freed blocks and larger kernels run faster
# there, so CUDA runs the whole batch, as does a compiled model.
# Elements, not bytes: bf16 slices as finely as fp32, as its emulated kernels' scratch is fp32.
SLICE_ELEMENTS = 2 * 2**20


_WHOLE = slice(None)


def _batch_slices(inputs: Sequence[Tensor]) -> list[slice]:
    """The batch slices to run in; ``[_WHOLE]`` for the whole batch at once."""
    n = inputs[0].shape[0]
    if inputs[0].is_cuda or torch.compiler.is_compiling():
        # compiled: the graph's buffers are planned by the compiler, not glibc, and the sizes
        # may be symbolic
        return [_WHOLE]
    k = min(n, max(1, -(-sum(t.numel() for t in inputs) // SLICE_ELEMENTS)))
    if k == 1:
        return [_WHOLE]
    step = -(-n // k)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _rows(t: Tensor, sl: slice) -> Tensor:
    # the whole batch as it is: no view op per input per layer on the unsliced (CUDA) path
    return t if sl is _WHOLE else t[sl]


def _accumulate(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    """A weight gradient summed over batch slices, in fp32."""
    if g is None:
        return total
    return g.float() if total is None else total.add_(g)


def _relu_backward(ctx, grad_out, inputs, bn_w, bn_b, conv_w) -> tuple:
    # ReLU: every gradient written by hand, in place where possible, so backward holds at most
    # three tensors the size of the concatenation (x, z, dz) where autograd would hold five
    if ctx.unit is None:
        return _relu_backward_batch_stats(ctx, grad_out, inputs, bn_w, bn_b, conv_w)
    _, _, conv, pool = ctx.modules
    slices = _batch_slices(inputs)
    want_x = inputs[0].requires_grad
    mask = [False, bn_w.requires_grad, bn_b.requires_grad]
    grad_x, sums = None, [None, None, None]  # dL/d(bn_w, bn_b, conv_w), accumulated in fp32
    with torch.no_grad():
        for sl in slices:
            x = cat_channels([_rows(t, sl) for t in inputs])
            z = _affine(x, bn_w, bn_b, ctx.unit).relu_()
            grad_z, grad_conv_w = _relu_conv_backward(conv, pool, _rows(grad_out, sl), z, conv_w)
            del z
            _, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
                grad_z, x, bn_w, *ctx.unit, None, None, False, 0.0, mask
            )
            del x
            sums = [_accumulate(t, g) for t, g in zip(sums, (grad_w, grad_b, grad_conv_w))]
            if not want_x:
                continue
            w = bn_w.view(1, -1, 1, 1)
            if len(slices) == 1:  # d(x*w + b)/dx = w: scale dz in place, the sums are taken
                grad_x = grad_z.mul_(w)
            else:
                if grad_x is None:
                    shape = (inputs[0].shape[0], *grad_z.shape[1:])
                    fmt = _memory_format(grad_z)
                    grad_x = torch.empty(
                        shape, dtype=grad_z.dtype, device=grad_z.device, memory_format=fmt
                    )
                torch.mul(grad_z, w, out=grad_x[sl])
    params = (bn_w, bn_b, conv_w)
    grad_w, grad_b, grad_conv_w = (
        g.to(p.dtype) if g is not None else None for g, p in zip(sums, params)
    )
    return (*_split_grad(grad_x, inputs), grad_w, grad_b, grad_conv_w)


def _memory_format(t: Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format


def _relu_conv_backward(conv, pool, grad_out: Tensor, z: Tensor, conv_w: Tensor):
    """dL/dz (not yet through the ReLU) and dL/dw of ``conv(pool(z))`` for ReLU'd ``z``;
    dL/dz is then taken through the ReLU in place."""
    if pool is None:
        grad_z, grad_conv_w = _conv_backward(conv, grad_out, z, conv_w)
    else:
        grad_p, grad_conv_w = _conv_backward(conv, grad_out, _avg_pool(z, pool), conv_w)
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
            z = _affine(x, w, b, ctx.unit)
        else:
            z = F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
        y = act(z)
        if pool is not None:
            y = _avg_pool(y, pool)
    grad_y, grad_conv_w = _conv_backward(conv, grad_out, y.detach(), conv_w)
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
) -> Tensor:
    """``conv(act(bn(cat(inputs))))`` in training mode, keeping only ``inputs`` for backward.

    ``unit`` (``unit_stats``): the inputs are already normalised (``normalize``) and the caller
    updates the running statistics; otherwise this BN computes batch statistics and updates its own.
    ``pool``: an average pool between act and conv (``pool_commutes``).
    """
    if unit is None:
        bn.num_batches_tracked.add_(1)
    return _BNActConv.apply(
        bn, act, conv, pool, unit, len(inputs), *inputs, bn.weight, bn.bias, conv.weight,
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
) -> Tensor:
    """``conv(act(bn(cat(x))))`` reading normalised feature maps; ``lean``: keep only them.

    ``pool``: an average pool between act and conv (``pool_commutes``).
    """
    if lean and fusable(bn, conv):
        return bn_act_conv(x_hats, bn, act, conv, unit, pool)
    y = affine_act(x_hats, bn, act, unit)
    return conv(pool(y) if pool is not None else y)


class _InputConv(torch.autograd.Function):
    """A convolution of the network's input, whose gradient nobody wants.

    Backward computes only the weight gradient, in batch slices (see ``SLICE_ELEMENTS``): the
    ImageNet stem's 7x7 convolution is the largest single scratch of the step on CPU (its
    weight gradient's oneDNN buffers; under emulated bf16, the step's RSS peak).
    """

    @staticmethod
    def forward(ctx, conv: nn.Conv2d, x: Tensor, w: Tensor):
        ctx.conv = conv
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w = ctx.saved_tensors
        grad_w = None
        for sl in _batch_slices([grad_out]):
            _, g = _conv_backward(ctx.conv, _rows(grad_out, sl), _rows(x, sl), w, input_grad=False)
            grad_w = _accumulate(grad_w, g)
        heap.release_if_slack(grad_out.device)
        return None, None, grad_w.to(w.dtype)


def input_conv(x: Tensor, conv: nn.Module) -> Tensor:
    """``conv(x)`` for an ``x`` that needs no gradient (see ``_InputConv``)."""
    if not _plain_conv(conv) or x.requires_grad or not conv.weight.requires_grad:
        return conv(x)
    return _InputConv.apply(conv, x, conv.weight)


class _BNActPool(torch.autograd.Function):
    """The ImageNet stem's BN -> act -> max-pool, keeping only the convolution's output.

    Otherwise the BN output and the pool's int64 indices are kept: at 224 px they are the two
    largest activations of the whole network.
    """

    @staticmethod
    def forward(ctx, bn: nn.BatchNorm2d, act: nn.Module, pool: nn.MaxPool2d, x: Tensor, *params):
        w, b = params[:2]
        m = _momentum(bn)
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
