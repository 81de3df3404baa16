"""CPU batch slicing of the memory-efficient readers, and the convolution backward they share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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


def batch_slices(inputs: Sequence[Tensor]) -> list[slice]:
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


def batch_rows(t: Tensor, sl: slice) -> Tensor:
    # the whole batch as it is: no view op per input per layer on the unsliced (CUDA) path
    return t if sl is _WHOLE else t[sl]


def accumulate(total: Tensor | None, g: Tensor | None) -> Tensor | None:
    """A weight gradient summed over batch slices, in fp32."""
    if g is None:
        return total
    return g.float() if total is None else total.add_(g)


def conv_backward(
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


def memory_format_of(t: Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl and not t.is_contiguous() else torch.contiguous_format
