"""The fast implementation of the DenseNet modules (``model.impl=fast``, the default).

``densenet`` holds the modules; ``stats`` the shared BatchNorm statistics of a dense block,
``fused`` the memory-efficient BN-act-conv reader, ``stem`` the ImageNet stem's pieces and
``slicing`` the CPU batch slices they run in.
"""

from . import fused, slicing, stats, stem
from .densenet import DenseFeatures, DenseNet

__all__ = ["DenseFeatures", "DenseNet", "fused", "slicing", "stats", "stem"]
