"""The fast implementation of the DenseNet modules (``model.impl=fast``, the default)."""

from . import fused
from .densenet import DenseFeatures, DenseNet

__all__ = ["DenseFeatures", "DenseNet", "fused"]
