"""Weights from files: torchvision-format state dicts, and the strict check every load makes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

# torchvision's old checkpoints name BN params "norm.1"/"relu.1"/"conv.1" instead of "norm1"...
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename old-style torchvision keys (``norm.1.weight`` -> ``norm1.weight``)."""
    out = {}
    for key, value in state_dict.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def check_state_dict(
    own: dict[str, Tensor], state: dict[str, Tensor], what: str, skip: Sequence[str] = ()
) -> None:
    """Raise naming the missing, unexpected and mis-shaped keys, if any: a wrong architecture
    must not load silently. ``skip`` are keys the caller replaces on purpose."""
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"{what} does not match this architecture (it is of a different architecture): "
            f"missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}, shape mismatches {shapes[:8]}"
        )


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local torchvision-format state dict; returns the keys left at their init.

    A classifier of a different class count is replaced (kept at its fresh init). Any other
    mismatch is an error that names the keys, so a wrong architecture cannot load silently.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or a corrupt file
        raise RuntimeError(f"model.pretrained: cannot load {path} safely: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our own checkpoints
    state = convert_torchvision_state_dict(state)
    own = model.state_dict()
    skipped = []
    for key in ("classifier.weight", "classifier.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]
            skipped.append(key)
    check_state_dict(own, state, f"model.pretrained {path}", skip=skipped)
    model.load_state_dict(state, strict=False)
    return skipped
