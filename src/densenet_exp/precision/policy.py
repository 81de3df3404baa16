"""One run's precision policy on ``torch.amp``: casting, autocast, loss scaling, stepping.

The engine uses one :class:`Precision` per run: ``prepare`` once before DDP wrapping,
``autocast()`` around forward + loss, ``backward`` per micro-batch, ``step`` per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import AmpBackend, AmpConfig
from .spec import PrecisionError, amp_config, describe, resolve_spec

log = logging.getLogger("densenet_exp.precision")

# APEX's dynamic scaler: start at 2**16, halve on overflow, double after 2000 clean steps
DYNAMIC_INIT, DYNAMIC_FACTOR, DYNAMIC_WINDOW = 2.0**16, 2.0, 2000
APEX_REMOVED = (
    "amp.backend=apex needs apex.amp, which NVIDIA removed from apex in release 25.07 (and the "
    "PyPI package named 'apex' is an unrelated project). amp.backend=native implements the same "
    "opt_levels O0-O3 on torch.amp: use it."
)


class _LowPrecisionGradScaler(torch.amp.GradScaler):
    """GradScaler that also unscales fp16 gradients.

    torch refuses fp16 grads (the division can underflow), but APEX's O3 with a loss scale, and O2
    without master weights, do exactly that: those levels carry that risk by definition.
    """

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):  # type: ignore[override]
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, True)


class Precision:
    """One run's precision policy: model/optimizer preparation, autocast, scaling, stepping."""

    def __init__(self, amp_cfg: AmpConfig | Any, device: torch.device) -> None:
        amp_cfg = amp_config(amp_cfg)
        if amp_cfg.backend == AmpBackend.apex:
            try:
                import apex.amp  # noqa: F401
            except ImportError:
                raise PrecisionError(APEX_REMOVED) from None
            raise PrecisionError(
                "apex.amp is importable but amp.backend=apex is not supported by this version: "
                "amp.backend=native implements the same opt_levels"
            )
        self.device = device
        self.spec = resolve_spec(amp_cfg, device)
        self.masters: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.scaler: torch.amp.GradScaler | None = None
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)
        scale = self.spec.loss_scale
        if scale is not None:
            fp16_grads = self.spec.cast_model and not self.spec.master_weights
            cls = _LowPrecisionGradScaler if fp16_grads else torch.amp.GradScaler
            self.scaler = cls(
                device.type,
                init_scale=DYNAMIC_INIT if scale == "dynamic" else float(scale),
                growth_factor=DYNAMIC_FACTOR,
                backoff_factor=1.0 / DYNAMIC_FACTOR,
                growth_interval=DYNAMIC_WINDOW,
            )

    def __repr__(self) -> str:
        s = self.spec
        dtype = str(s.dtype).removeprefix("torch.")
        return (
            f"Precision({s.opt_level}, dtype={dtype}, autocast={s.autocast}, "
            f"cast_model={s.cast_model}, "
            f"keep_batchnorm_fp32={s.keep_batchnorm_fp32}, master_weights={s.master_weights}, "
            f"loss_scale={s.loss_scale})"
        )

    def describe(self) -> str:
        """The level in words, e.g. "O1: bf16 autocast, fp32 weights, no loss scaling"."""
        return describe(self.spec)

    # -- set-up ---------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """Cast the model for O2/O3 and give the optimizer fp32 masters where the level wants them.

        Call once, after the optimizer is built on the fp32 model and before DDP wraps the model.
        Without an optimizer (inference) only the casting is done.
        """
        if not self.spec.cast_model:
            return
        if self.spec.master_weights and optimizer is not None:
            for group in optimizer.param_groups:
                masters = []
                for p in group["params"]:
                    master = p.detach().clone().float().requires_grad_(True)
                    self.masters.append((p, master))
                    masters.append(master)
                group["params"] = masters
            optimizer.state.clear()
        low = self.spec.dtype
        for module in model.modules():
            if self.spec.keep_batchnorm_fp32 and isinstance(
                module, nn.modules.batchnorm._BatchNorm
            ):
                continue
            for p in module.parameters(recurse=False):
                p.data = p.data.to(low)
            for name, b in module.named_buffers(recurse=False):
                if b.is_floating_point():
                    setattr(module, name, b.to(low))

    # -- per step -------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.spec.autocast:
            return torch.autocast(self.device.type, dtype=self.spec.dtype)
        return contextlib.nullcontext()

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.spec.dtype) if self.spec.cast_model else x

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None = None,
    ) -> torch.Tensor:
        """Unscale, clip, step (skipped on inf/nan gradients when scaling), update the scale.

        Returns the global gradient norm before clipping, as a tensor (no host sync here).
        """
        if self.masters:
            for p, master in self.masters:
                if p.grad is not None:
                    master.grad = p.grad.float()
                    p.grad = None
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            params, grad_clip if grad_clip else float("inf"), foreach=True
        )
        if self.scaler is not None:
            self._skipped += (~torch.isfinite(norm)).long()  # counted on device: no sync
            self.scaler.step(optimizer)  # skips the update itself when grads hold inf/nan
            if self.spec.loss_scale == "dynamic":
                self.scaler.update()
            else:
                self.scaler.update(float(self.spec.loss_scale))
        else:
            optimizer.step()
        if self.masters:
            with torch.no_grad():
                for p, master in self.masters:
                    p.copy_(master)
        return norm.detach()

    def zero_grad(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.masters:
            model.zero_grad(set_to_none=True)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped because the scaled gradients overflowed."""
        return int(self._skipped.item())

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def master_params(self) -> Iterable[torch.Tensor]:
        return (m for _, m in self.masters)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "opt_level": self.spec.opt_level,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "masters": [m.detach().clone() for _, m in self.masters],
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("opt_level") != self.spec.opt_level:
            log.warning(
                "checkpoint was trained at amp.opt_level=%s, resuming at %s",
                state.get("opt_level"),
                self.spec.opt_level,
            )
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        masters = state.get("masters") or []
        if self.masters and len(masters) == len(self.masters):
            with torch.no_grad():
                for (p, master), saved in zip(self.masters, masters):
                    master.copy_(saved)
                    p.copy_(saved)
        self._skipped.fill_(int(state.get("skipped_steps", 0)))
