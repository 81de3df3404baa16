"""Recomputation in backward for ``memory_efficient``: keep a layer's inputs, not its insides."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn


def recomputes(module: nn.Module) -> bool:
    """Whether ``module`` trades compute for memory now: it is memory-efficient, training, and a
    backward will follow (the one test every memory-efficient layer and stem asks)."""
    return (
        bool(getattr(module, "memory_efficient", False))
        and module.training
        and (torch.is_grad_enabled())
    )


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Recomputation in backward must not update BN running stats a second time.

    A momentum of 0 leaves running_mean/var unchanged while still normalising with batch stats,
    so a memory-efficient model's running stats equal those of one without recomputation.
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


# torch.compile (2.14) cannot trace a checkpoint with a context_fn ("checkpoint not
# implemented for ... context_fn"), and the context is what keeps the recomputation from
# updating the running stats twice: this part runs eagerly, a graph break per dense layer.
@torch.compiler.disable
def recomputed(module: nn.Module, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """``fn(*inputs)`` without keeping its intermediates: backward runs it again.

    No RNG inside, so no RNG state to stash.
    """
    return cp.checkpoint(
        fn,
        *inputs,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), frozen_bn_stats(module)),
    )
