"""The one boundary between the typed config the code uses and plain containers.

``to_typed`` makes the schema's dataclasses from a composed DictConfig, nested dicts (a
checkpoint's) or a ``Config``; ``node`` does it for one node (a builder's own); ``to_plain`` goes
back, for checkpoints and JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .choices import Choice
from .schema import Config

T = TypeVar("T")


def to_typed(cfg: Any) -> Config:
    """The composed config (a DictConfig, nested dicts or a ``Config``) as the typed ``Config``.

    Plain dicts merge onto the schema first, so a wrong key or value fails here with OmegaConf's
    message naming it and the valid choices. This and ``to_plain`` are the one boundary between
    the typed config the code uses and the plain containers of checkpoints and files.
    """
    return node(Config, cfg)


class ConfigError(ValueError):
    """A config value the schema does not allow; the message names it and the valid choices."""


def node(cls: type[T], value: Any, name: str = "") -> T:
    """One node of the config (``AmpConfig``, ``DataConfig``, ...) from any of its forms.

    ``name`` ("amp", "data", ...) prefixes the keys in error messages.
    """
    if isinstance(value, cls):
        return value
    try:
        if not (isinstance(value, DictConfig) and OmegaConf.get_type(value) is cls):
            value = OmegaConf.merge(OmegaConf.structured(cls), value)
        return OmegaConf.to_object(value)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(cls, e, value, f"{name}." if name else "")) from None


def _explain(cls: type, e: OmegaConfBaseException, given: Any, prefix: str) -> str:
    """OmegaConf's error in our words: the key, the bad value, and the enum's valid choices."""
    key = getattr(e, "full_key", None) or ""
    if not key:
        return f"{prefix.rstrip('.') or cls.__name__}: {e}"
    kind: Any = cls
    for part in key.split("."):
        hints = get_type_hints(kind) if dataclasses.is_dataclass(kind) else {}
        kind = hints.get(part)
    try:
        bad = OmegaConf.select(OmegaConf.create(given), key) if isinstance(given, dict) else None
    except OmegaConfBaseException:
        bad = None
    if isinstance(kind, type) and issubclass(kind, Choice):  # every enum of the schema
        return f"unknown {prefix}{key} {bad!r}; valid choices: {kind.valid()}"
    first_line = str(e).splitlines()[0]
    return f"{prefix}{key}: {first_line}"


def to_plain(cfg: Any) -> dict[str, Any]:
    """A typed config (or node) as plain containers with enums as strings: for checkpoints, JSON."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg) if not isinstance(cfg, dict) else OmegaConf.create(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
