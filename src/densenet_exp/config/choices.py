"""The valid choices of the config's enum-valued keys: one list each, used everywhere."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A set of valid choices; a member prints as its value, the string written in the config."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def valid(cls) -> str:
        """The valid choices, as an error message lists them."""
        return ", ".join(m.value for m in cls)

    @classmethod
    def parse(cls: type[C], value: str, key: str) -> C:
        """``value`` as a member, or a ValueError naming ``key``, the value and the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown {key} {value!r}; valid choices: {cls.valid()}") from None


class Stem(Choice):
    imagenet = "imagenet"  # 7x7/s2 conv + 3x3/s2 max-pool (ImageNet DenseNets)
    cifar = "cifar"  # one 3x3/s1 conv (DenseNet-BC for small images)


class Impl(Choice):
    fast = "fast"  # models/fast: shared BN statistics, recompute-in-backward kernels (presets)
    plain = "plain"  # models/densenet.py: the network as the paper draws it (the default)


class ConvType(Choice):
    standard = "standard"
    dsconv = "dsconv"
    custom = "custom"  # a class of the user's own: conv._target_


class ActName(Choice):
    relu = "relu"
    swish = "swish"
    prelu = "prelu"
    gelu = "gelu"
    mish = "mish"
    custom = "custom"  # a class of the user's own: act._target_


class NormType(Choice):
    batch = "batch"  # BatchNorm2d (SyncBatchNorm across ranks with sync_bn=true)
    custom = "custom"  # a class of the user's own: norm._target_


class OptLevel(Choice):
    O0 = "O0"
    O1 = "O1"
    O2 = "O2"
    O3 = "O3"


class AmpDtype(Choice):
    auto = "auto"
    float16 = "float16"
    bfloat16 = "bfloat16"


class AmpBackend(Choice):
    native = "native"
    apex = "apex"


class InitName(Choice):
    kaiming = "kaiming"
    xavier = "xavier"
    orthogonal = "orthogonal"
    default = "default"


class InitMode(Choice):
    fan_in = "fan_in"
    fan_out = "fan_out"


class InitDistribution(Choice):
    normal = "normal"
    uniform = "uniform"


class DataName(Choice):
    digits = "digits"
    imagefolder = "imagefolder"
    synthetic = "synthetic"


class Augment(Choice):
    none = "none"
    light = "light"  # small affine jitter, no flips: safe for digits and text
    imagenet = "imagenet"  # RandomResizedCrop + horizontal flip


class CacheMode(Choice):
    auto = "auto"  # ram when the decoded images fit the RAM budget, else none
    none = "none"  # decode every image every epoch, in the loader
    ram = "ram"  # decode every image once, at the size its transform needs
    disk = "disk"  # the same, into a memory-mapped file reused by later runs (data/diskcache.py)


class AugmentOn(Choice):
    auto = "auto"  # device when the train split is cached or decoded on the GPU, else loader
    device = "device"  # whole batches on the training device, per-image parameters
    loader = "loader"  # per image, in the loader (torchvision v2 on PIL images)


class DecodeOn(Choice):
    cpu = "cpu"  # PIL, in the loader (or once, into the cache)
    gpu = "gpu"  # nvJPEG on the training GPU, every epoch, for splits not cached (data/streamed.py)


class OnBadImage(Choice):
    skip = "skip"
    error = "error"


class OptimName(Choice):
    sgd = "sgd"
    adamw = "adamw"


class SchedName(Choice):
    cos = "cos"
    poly = "poly"
    step = "step"
    multistep = "multistep"
    constant = "constant"


class DeviceName(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LossName(Choice):
    ce = "ce"
    focal = "focal"


class DistBackend(Choice):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"
