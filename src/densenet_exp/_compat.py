"""Small helpers shared by modules that accept either a composed DictConfig or plain dicts."""

from __future__ import annotations

from typing import Any


def choice(value: Any) -> Any:
    """An enum member's value (DictConfig nodes hold enums), anything else unchanged."""
    return value.value if hasattr(value, "value") else value
