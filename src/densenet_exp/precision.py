"""APEX's mixed-precision opt_levels O0-O3, rebuilt on ``torch.amp``.

NVIDIA removed ``apex.amp`` in apex 25.07; the levels keep their documented meaning here:

| level | weights | compute              | BatchNorm  | master weights | loss scale |
|-------|---------|----------------------|------------|----------------|------------|
| O0    | fp32    | fp32                 | fp32       | -              | none       |
| O1    | fp32    | autocast (low dtype) | autocast   | -              | dynamic*   |
| O2    | low     | low                  | fp32       | fp32           | dynamic*   |
| O3    | low     | low                  | low        | -              | none (1.0) |

\\* for float16 only: bfloat16 has fp32's exponent range and needs no loss scaling by default.

The engine uses one :class:`Precision` per run: ``prepare`` once before DDP wrapping,
``autocast()`` around forward + loss, ``backward`` per micro-batch, ``step`` per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._compat import choice

log = logging.getLogger(__name__)

OPT_LEVELS = ("O0", "O1", "O2", "O3")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# APEX's dynamic scaler: start at 2**16, halve on overflow, double after 2000 clean steps
DYNAMIC_INIT, DYNAMIC_FACTOR, DYNAMIC_WINDOW = 2.0**16, 2.0, 2000
APEX_REMOVED = (
    "amp.backend=apex needs apex.amp, which NVIDIA removed from apex in release 25.07 (and the "
    "PyPI package named 'apex' is an unrelated project). amp.backend=native implements the same "
    "opt_levels O0-O3 on torch.amp: use it."
)


class PrecisionError(ValueError):
    """An amp setting or combination APEX would also have rejected."""


@dataclass(frozen=True)
class PrecisionSpec:
    """The resolved properties of a level after overrides (APEX's ``Properties``)."""

    opt_level: str
    dtype: torch.dtype  # the low dtype used by O1-O3
    autocast: bool
    cast_model: bool
    keep_batchnorm_fp32: bool
    master_weights: bool
    loss_scale: str | float | None  # None: no scaling; "dynamic"; or a static number

    @property
    def low(self) -> torch.dtype | None:
        return self.dtype if self.cast_model else None


def resolve_spec(amp_cfg: Any, device: torch.device) -> PrecisionSpec:
    """Level defaults + user overrides, validated as APEX validated them."""
    level = choice(amp_cfg["opt_level"])
    if level not in OPT_LEVELS:
        raise PrecisionError(
            f"unknown amp.opt_level {level!r}; valid choices: {', '.join(OPT_LEVELS)}"
        )
    dtype_name = choice(amp_cfg["dtype"])
    if dtype_name == "auto":
        dtype_name = "float16" if device.type == "cuda" else "bfloat16"
    if dtype_name not in DTYPES:
        raise PrecisionError(
            f"unknown amp.dtype {dtype_name!r}; valid choices: auto, float16, bfloat16"
        )
    dtype = DTYPES[dtype_name]
    keep_bn, master = amp_cfg["keep_batchnorm_fp32"], amp_cfg["master_weights"]
    if level in ("O0", "O1"):
        for key, value in (("keep_batchnorm_fp32", keep_bn), ("master_weights", master)):
            if value is not None:
                raise PrecisionError(
                    f"amp.{key}={value} has no meaning with amp.opt_level={level}: the model stays "
                    "fp32 there (APEX rejected it too); use O2 or O3, or set it to null"
                )
    defaults = {
        "O0": dict(autocast=False, cast_model=False, keep_bn=False, master=False),
        "O1": dict(autocast=True, cast_model=False, keep_bn=False, master=False),
        "O2": dict(autocast=False, cast_model=True, keep_bn=True, master=True),
        "O3": dict(autocast=False, cast_model=True, keep_bn=False, master=False),
    }[level]
    keep_bn = defaults["keep_bn"] if keep_bn is None else bool(keep_bn)
    master = defaults["master"] if master is None else bool(master)
    scale = _parse_loss_scale(amp_cfg["loss_scale"], level, dtype)
    if level == "O0":
        dtype = torch.float32
    return PrecisionSpec(
        level, dtype, defaults["autocast"], defaults["cast_model"], keep_bn, master, scale
    )


def describe(s: PrecisionSpec) -> str:
    """The level in words, e.g. "O1: bf16 autocast, fp32 weights, no loss scaling"."""
    low = _short(s.dtype)
    if s.opt_level == "O0":
        parts = ["fp32 throughout"]
    elif s.autocast:
        parts = [f"{low} autocast", "fp32 weights"]
    else:
        parts = [f"{low} weights and compute"]
        parts.append("fp32 BatchNorm" if s.keep_batchnorm_fp32 else f"{low} BatchNorm")
        if s.master_weights:
            parts.append("fp32 master weights")
    if s.loss_scale is None:
        parts.append("no loss scaling")
    elif s.loss_scale == "dynamic":
        parts.append("dynamic loss scaling")
    else:
        parts.append(f"loss scale {s.loss_scale:g}")
    return f"{s.opt_level}: {', '.join(parts)}"


def _short(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(
        dtype, str(dtype).removeprefix("torch.")
    )


def _parse_loss_scale(value: Any, level: str, dtype: torch.dtype) -> str | float | None:
    if value is None:
        needs_scaling = level in ("O1", "O2") and dtype == torch.float16
        return "dynamic" if needs_scaling else None
    text = str(value).strip().lower()
    if text == "dynamic":
        return "dynamic"
    try:
        number = float(text)
    except ValueError:
        raise PrecisionError(
            f"amp.loss_scale must be null, 'dynamic' or a positive number, got {value!r}"
        ) from None
    if not (number > 0 and math.isfinite(number)):
        raise PrecisionError(f"amp.loss_scale must be a positive finite number, got {value!r}")
    return None if number == 1.0 else number


class _LowPrecisionGradScaler(torch.amp.GradScaler):
    """GradScaler that also unscales fp16 gradients.

    torch refuses fp16 grads (the division can underflow), but APEX's O3 with a loss scale, and O2
    without master weights, do exactly that: those levels carry that risk by definition.
    """

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):  # type: ignore[override]
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, True)


class Precision:
    """One run's precision policy: model/optimizer preparation, autocast, scaling, stepping."""

    def __init__(self, amp_cfg: Any, device: torch.device) -> None:
        if choice(amp_cfg["backend"]) == "apex":
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
