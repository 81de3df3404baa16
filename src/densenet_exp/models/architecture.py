"""The model keys checked before any work, and the CIFAR depth rule of the paper's presets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ArchitectureError(ValueError):
    """A model key out of range; the message names the key and what it may be."""


def cifar_block_config(depth: int, bottleneck: bool, prefix: str = "model.") -> list[int]:
    """Layers per block of the paper's CIFAR networks: 3 blocks from depth L.

    L counts the stem, the transitions and the classifier (4 layers) plus the convolutions of the
    dense layers: one per layer without bottleneck, two with it, so a block has (L - 4) / 3
    layers, or (L - 4) / 6 bottleneck layers (Huang et al. 2017, section 3).
    """
    per_layer = 6 if bottleneck else 3
    if depth <= 4 or (depth - 4) % per_layer:
        rule = "(depth - 4) / 6 with bottleneck" if bottleneck else "(depth - 4) / 3 without"
        valid = [4 + per_layer * n for n in range(1, 6)]
        raise ArchitectureError(
            f"{prefix}depth={depth} does not give whole blocks: 3 blocks of {rule} layers each, "
            f"so depth must be 4 + {per_layer}n ({', '.join(map(str, valid))}, ...) with "
            f"{prefix}bottleneck={str(bottleneck).lower()}"
        )
    return [(depth - 4) // per_layer] * 3


def resolve_block_config(
    depth: int | None,
    blocks: Sequence[int] | None,
    bottleneck: bool = True,
    prefix: str = "model.",
) -> list[int]:
    """``model.block_config``, or the one ``model.depth`` gives (CIFAR presets), checked."""
    if depth is not None:
        derived = cifar_block_config(depth, bottleneck, prefix)
        if blocks is not None and list(blocks) != derived:
            raise ArchitectureError(
                f"{prefix}depth={depth} gives {prefix}block_config={derived}, but "
                f"{prefix}block_config={list(blocks)} is set too: set one of them (the other null)"
            )
        return derived
    if blocks is None:
        raise ArchitectureError(f"{prefix}block_config is null and {prefix}depth is null: set one")
    check_options(block_config=blocks, prefix=prefix)
    return [int(b) for b in blocks]


def check_options(prefix: str = "", **options: Any) -> None:
    """Raise naming the first key out of range among the DenseNet options given."""
    for key in ("growth_rate", "bn_size", "num_init_features"):
        if key in options and not (_is_int(options[key]) and options[key] >= 1):
            raise ArchitectureError(f"{prefix}{key}={options[key]!r} must be an integer >= 1")
    if "block_config" in options:
        blocks = options["block_config"]
        if (
            not isinstance(blocks, Sequence)
            or isinstance(blocks, str)
            or not blocks
            or not all(_is_int(b) and b >= 1 for b in blocks)
        ):
            raise ArchitectureError(
                f"{prefix}block_config={blocks!r} must be a non-empty list of positive integers "
                "(layers per dense block, e.g. [6,12,24,16])"
            )
    if "drop_rate" in options and not 0.0 <= float(options["drop_rate"]) < 1.0:
        raise ArchitectureError(f"{prefix}drop_rate={options['drop_rate']!r} must be in [0, 1)")
    if "compression" in options and not 0.0 < float(options["compression"]) <= 1.0:
        raise ArchitectureError(
            f"{prefix}compression={options['compression']!r} must be in (0, 1] "
            "(the share of feature maps a transition keeps: 0.5 in DenseNet-BC, 1 without C)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
