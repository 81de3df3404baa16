"""APEX's mixed-precision opt_levels O0-O3, rebuilt on ``torch.amp``.

NVIDIA removed ``apex.amp`` in apex 25.07; the levels keep their documented meaning.
``spec`` says what a level (with the user's overrides) is; ``policy`` carries it out.
"""

from .policy import APEX_REMOVED, DYNAMIC_INIT, Precision
from .spec import PrecisionError, PrecisionSpec, describe, resolve_spec

__all__ = [
    "APEX_REMOVED",
    "DYNAMIC_INIT",
    "Precision",
    "PrecisionError",
    "PrecisionSpec",
    "describe",
    "resolve_spec",
]
