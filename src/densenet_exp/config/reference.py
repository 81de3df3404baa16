"""The config reference, read from the schema itself: every key with its type, default, valid
choices and the help line written beside its field in ``schema.py``.

The help is the comment on a field's line or the comment lines right above it: one place to
write it, read by the documentation site (``docs/reference/config.md``) and checked by the suite
(a key without help fails). Comments rather than ``field(metadata=...)``: they keep the schema as
readable as a config file, and Hydra's structured configs ignore metadata anyway.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from . import schema
from .schema import Config


@dataclass(frozen=True)
class Key:
    key: str  # dotted: data.batch_size
    type: str  # int, float, bool, str, list[int], a choice; "or null" when it may be null
    default: str  # as written in YAML
    choices: tuple[str, ...]  # the valid values of an enum-valued key
    help: str


def _comments(cls: type) -> dict[str, str]:
    """Field -> the comment beside it (same line) or right above it (contiguous lines)."""
    lines, _ = inspect.getsourcelines(cls)  # a module-level class: not indented
    body = ast.parse("".join(lines)).body[0].body  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    previous_end = 1  # the class line
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            above = []
            for text in reversed(lines[previous_end : node.lineno - 1]):
                if not text.strip().startswith("#"):
                    break
                above.insert(0, text.strip().lstrip("#").strip())
            found[node.target.id] = " ".join([*above, trailing]).strip()
        previous_end = getattr(node, "end_lineno", node.lineno) or node.lineno
    return found


def _type_name(tp: Any) -> tuple[str, tuple[str, ...]]:
    """A type as the reference writes it, and an enum's values."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        name, choices = _type_name(inner)
        return f"{name} or null", choices
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "choice", tuple(str(m.value) for m in tp)
    if typing.get_origin(tp) in (list, dict):
        inner = ", ".join(_type_name(a)[0] for a in args)
        return f"{typing.get_origin(tp).__name__}[{inner}]", ()
    return getattr(tp, "__name__", str(tp)), ()


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_keys(cls: type = Config, prefix: str = "") -> list[Key]:
    """Every key of the config tree under ``cls``, in schema order."""
    hints = typing.get_type_hints(cls, vars(schema))
    help_of = _comments(cls)
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += config_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        missing = f.default is dataclasses.MISSING
        default = f.default_factory() if missing else f.default  # type: ignore[misc]
        name, choices = _type_name(tp)
        keys.append(Key(prefix + f.name, name, _yaml(default), choices, help_of.get(f.name, "")))
    return keys


def reference_markdown() -> str:
    """The reference page's tables: one per top-level node."""
    out: list[str] = []
    node = None
    for k in config_keys():
        top = k.key.split(".")[0] if "." in k.key else "(top level)"
        if top != node:
            node = top
            out += ["", f"### `{top}`" if "." in k.key else "### Top level", ""]
            out += ["| key | type | default | help |", "|---|---|---|---|"]
        kind = f"one of {', '.join(f'`{c}`' for c in k.choices)}" if k.choices else k.type
        if k.choices and "null" in k.type:
            kind += " or null"
        text = k.help.replace("|", "\\|")
        out.append(f"| `{k.key}` | {kind} | `{k.default}` | {text} |")
    return "\n".join(out).strip() + "\n"
