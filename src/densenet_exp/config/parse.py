"""The schema's string values that are not enums ("auto" or a number, "dynamic"), parsed once."""

from __future__ import annotations

import math
from typing import Any


def parse_count(value: Any, key: str, minimum: int) -> int | None:
    """``auto`` (None: the code decides from the hardware) or a whole number >= ``minimum``.

    The one parser of the schema's "auto or N" strings, so each is read the same way everywhere.
    """
    text = str(value).strip()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{key} must be 'auto' or a number >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{key} must be >= {minimum} (or 'auto'), got {n}")
    return n


def parse_loss_scale(value: Any) -> str | float | None:
    """``amp.loss_scale``: None (the level's default), ``"dynamic"`` or a positive finite number."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "dynamic":
        return "dynamic"
    try:
        number = float(text)
    except ValueError:
        raise ValueError(
            f"amp.loss_scale must be null, 'dynamic' or a positive number, got {value!r}"
        ) from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"amp.loss_scale must be a positive finite number, got {value!r}")
    return number
