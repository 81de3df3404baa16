"""What an opt_level means: the levels' properties after the user's overrides, in words.

NVIDIA removed ``apex.amp`` in apex 25.07; the levels keep their documented meaning here:

| level | weights | compute              | BatchNorm  | master weights | loss scale |
|-------|---------|----------------------|------------|----------------|------------|
| O0    | fp32    | fp32                 | fp32       | -              | none       |
| O1    | fp32    | autocast (low dtype) | autocast   | -              | dynamic*   |
| O2    | low     | low                  | fp32       | fp32           | dynamic*   |
| O3    | low     | low                  | low        | -              | none (1.0) |

\\* for float16 only: bfloat16 has fp32's exponent range and needs no loss scaling by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import AmpConfig, AmpDtype, OptLevel, node

DTYPES = {AmpDtype.float16: torch.float16, AmpDtype.bfloat16: torch.bfloat16}
# the levels as APEX defined them, before the user's overrides
LEVELS = {
    OptLevel.O0: dict(autocast=False, cast_model=False, keep_bn=False, master=False),
    OptLevel.O1: dict(autocast=True, cast_model=False, keep_bn=False, master=False),
    OptLevel.O2: dict(autocast=False, cast_model=True, keep_bn=True, master=True),
    OptLevel.O3: dict(autocast=False, cast_model=True, keep_bn=False, master=False),
}


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


def amp_config(amp_cfg: AmpConfig | Any) -> AmpConfig:
    """The typed ``amp`` node; a bad value is a ``PrecisionError`` naming the valid choices."""
    try:
        return node(AmpConfig, amp_cfg, "amp")
    except ValueError as e:
        raise PrecisionError(str(e)) from None


def resolve_spec(amp_cfg: AmpConfig | Any, device: torch.device) -> PrecisionSpec:
    """Level defaults + user overrides, validated as APEX validated them."""
    a = amp_config(amp_cfg)
    level = a.opt_level
    dtype = DTYPES.get(a.dtype) or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    keep_bn, master = a.keep_batchnorm_fp32, a.master_weights
    if level in (OptLevel.O0, OptLevel.O1):
        for key, value in (("keep_batchnorm_fp32", keep_bn), ("master_weights", master)):
            if value is not None:
                raise PrecisionError(
                    f"amp.{key}={value} has no meaning with amp.opt_level={level}: the model stays "
                    "fp32 there (APEX rejected it too); use O2 or O3, or set it to null"
                )
    defaults = LEVELS[level]
    keep_bn = defaults["keep_bn"] if keep_bn is None else keep_bn
    master = defaults["master"] if master is None else master
    scale = a.requested_loss_scale
    if scale is None:  # the level's default: fp16 needs scaling where gradients are fp16-small
        scale = "dynamic" if level in ("O1", "O2") and dtype == torch.float16 else None
    elif scale == 1.0:
        scale = None
    if level == OptLevel.O0:
        dtype = torch.float32
    return PrecisionSpec(
        level.value, dtype, defaults["autocast"], defaults["cast_model"], keep_bn, master, scale
    )


def describe(s: PrecisionSpec) -> str:
    """The level in words, e.g. "O1: bf16 autocast, fp32 weights, no loss scaling"."""
    low = _short(s.dtype)
    if s.opt_level == OptLevel.O0:
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
