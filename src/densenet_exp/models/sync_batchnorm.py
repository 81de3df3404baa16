"""A SyncBatchNorm that works on any device and backend (gloo on CPU included).

``torch.nn.SyncBatchNorm`` raises on CPU tensors and DDP refuses it on a CPU model, so CPU/gloo
runs use this one. It normalises with the statistics of the global batch: one all-reduce of
per-channel (sum, sum of squares, count) in forward and one of the two gradient terms in backward.
Statistics are computed in fp32 for fp16/bf16 inputs, as torch's own does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _world(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _stat_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half inputs (as torch's BN does), the input's own dtype when wider."""
    return torch.promote_types(x.dtype, torch.float32)


class _SyncBNFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        group: dist.ProcessGroup | None,
    ) -> Tensor:
        c = x.shape[1]
        x32 = x.to(_stat_dtype(x))
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() // c], dtype=x32.dtype, device=x.device)
        stats = torch.cat([x32.sum(dims), (x32 * x32).sum(dims), count])
        dist.all_reduce(stats, group=group)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min_(0.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * (total / (total - 1).clamp_min(1.0))
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_(unbiased.to(running_var.dtype), momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (x32 - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.to(x32.dtype).view(shape) + bias.to(x32.dtype).view(shape)
        ctx.save_for_backward(x, weight, mean, invstd, total)
        ctx.group = group
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, mean, invstd, total = ctx.saved_tensors
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        g = grad_out.to(mean.dtype)
        xhat = (x.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
        # local terms; weight/bias grads stay local (DDP averages them like any other gradient)
        sum_dy = g.sum(dims)
        sum_dy_xhat = (g * xhat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None else None
        terms = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(terms, group=ctx.group)
        mean_dy = (terms[:c] / total).view(shape)
        mean_dy_xhat = (terms[c:] / total).view(shape)
        scale = invstd.view(shape)
        if weight is not None:
            scale = scale * weight.to(mean.dtype).view(shape)
        grad_in = (g - mean_dy - xhat * mean_dy_xhat) * scale
        return grad_in.to(x.dtype), grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(nn.BatchNorm2d):
    """Drop-in ``BatchNorm2d`` that syncs batch statistics across the ranks of ``process_group``.

    A subclass of BatchNorm2d so that code treating BN specially (fp32 BN under O2, no weight
    decay on norms) treats it the same. Outside training or without a process group it is plain BN.
    """

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _world(self.process_group) > 1):
            return super().forward(x)
        if self.momentum is None:
            raise ValueError(
                "SyncBatchNorm needs a numeric momentum (cumulative average unsupported)"
            )
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        return _SyncBNFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.eps,
            self.momentum,
            self.process_group,
        )

    @classmethod
    def convert(
        cls, module: nn.Module, process_group: dist.ProcessGroup | None = None
    ) -> nn.Module:
        """Replace every BatchNorm2d in ``module`` by this class, keeping parameters and buffers."""
        out = module
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group=process_group,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child, process_group))
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on CUDA (fused kernels, NCCL); the portable one elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return SyncBatchNorm.convert(module)
