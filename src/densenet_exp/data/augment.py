"""The train transform on a whole batch, on the training device, with per-image random parameters.

torchvision's v2 transforms given a batch draw one set of random parameters for all of it; here
every image gets its own, and they are a function of (seed, epoch, image index) alone: a counter-
based hash (splitmix64) of the three, so a resumed run, any batch composition and any number of
ranks draw the same crop for the same image (what the per-image loader path gets by seeding
torch's generator per item). The parameters are drawn as torchvision draws them:

- ``light``: ``RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))``, nearest
  neighbour, zero fill, on the center crop the cache stored;
- ``imagenet``: ``RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3))`` with torchvision's ten
  tries and its center-crop fallback, in the original image's coordinates, sampled bilinearly
  from the stored square; then a horizontal flip with probability 1/2;
- ``none``: nothing.

Each becomes one affine sampling grid per image (``affine_grid`` / ``grid_sample``), then
``ToDtype`` and ``Normalize`` as the loader path applies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from ..config import Augment

# splitmix64's constants as signed 64-bit integers (torch has no uint64 arithmetic)
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64
ATTEMPTS = 10  # RandomResizedCrop's tries before its fallback


def _shift_right(z: Tensor, k: int) -> Tensor:
    """A logical right shift (``>>`` on int64 is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    z = z + _GOLDEN  # int64 arithmetic wraps, as splitmix64's uint64 does
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def uniforms(seed: int, epoch: int, index: Tensor, n: int) -> Tensor:
    """(len(index), n) float64 uniforms in [0, 1), each a function of (seed, epoch, index, k)."""
    key = _mix(_mix(torch.tensor(seed, dtype=torch.int64)) ^ epoch)
    z = _mix(key ^ index.to(torch.int64).cpu())
    streams = _mix(z[:, None] ^ torch.arange(n, dtype=torch.int64))
    return _shift_right(streams, 11).double() * 2.0**-53


def affine_params(u: Tensor, size: int) -> Tensor:
    """RandomAffine(10, (0.1, 0.1), (0.9, 1.1))'s draws from 4 uniforms per image, as the (B, 2, 3)
    ``affine_grid`` matrices (output -> input, normalised coordinates) of a square image."""
    angle = torch.deg2rad(-10 + 20 * u[:, 0])
    max_shift = 0.1 * size
    tx = torch.round(-max_shift + 2 * max_shift * u[:, 1]) * 2 / size  # whole pixels, normalised
    ty = torch.round(-max_shift + 2 * max_shift * u[:, 2]) * 2 / size
    scale = 0.9 + 0.2 * u[:, 3]
    # output = s R (input) + t about the center; the grid needs input = R^-1 (output - t) / s
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    inv = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
    t = torch.stack([tx, ty], 1)[:, :, None]
    return torch.cat([inv, -inv @ t], 2)


def resized_crop_params(u: Tensor, sizes: Tensor) -> Tensor:
    """RandomResizedCrop's boxes (and a flip) from ``4 * ATTEMPTS + 1`` uniforms per image, in the
    original (h, w) of each image, as ``affine_grid`` matrices over the whole stored image."""
    h, w = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = h * w
    a = u[:, : 4 * ATTEMPTS].reshape(-1, ATTEMPTS, 4)
    target = area * (0.08 + 0.92 * a[..., 0])
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * a[..., 1])
    cw = torch.round(torch.sqrt(target * aspect))
    ch = torch.round(torch.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    top = torch.floor(a[..., 2] * (h - ch + 1))
    left = torch.floor(a[..., 3] * (w - cw + 1))
    # the fallback: the whole image, or its center with the ratio clamped to [3/4, 4/3]
    ratio = w / h
    fw = torch.where(ratio > 4 / 3, torch.round(h * 4 / 3), w)
    fh = torch.where(ratio < 3 / 4, torch.round(w * 4 / 3), h)
    first = torch.where(ok.any(1), ok.double().argmax(1), 0)[:, None]
    found = ok.any(1, keepdim=True)

    def pick(tries: Tensor, fallback: Tensor) -> Tensor:
        return torch.where(found, tries.gather(1, first), fallback)

    cw, ch = pick(cw, fw), pick(ch, fh)
    left = pick(left, torch.floor((w - fw) / 2))
    top = pick(top, torch.floor((h - fh) / 2))
    flip = torch.where(u[:, 4 * ATTEMPTS : 4 * ATTEMPTS + 1] < 0.5, -1.0, 1.0)
    sx, sy = cw / w, ch / h
    cx, cy = (left + cw / 2) / w * 2 - 1, (top + ch / 2) / h * 2 - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.cat([sx * flip, zero, cx], 1), torch.cat([zero, sy, cy], 1)], 1)


class BatchAugment:
    """A train transform (``augment``) on a uint8 batch of a device split, where the batch is."""

    def __init__(
        self, augment: str, image_size: int, mean: Sequence[float], std: Sequence[float], seed: int
    ) -> None:
        if augment not in ("none", "light", "imagenet"):
            raise ValueError(f"unknown data.augment {augment!r}; valid: none, light, imagenet")
        self.augment, self.image_size, self.seed = augment, image_size, seed
        self.mean, self.std = list(mean), list(std)

    def __call__(self, x: Tensor, index: Tensor, epoch: int, sizes: Tensor | None = None) -> Tensor:
        """Normalised float images of ``image_size`` from the uint8 batch ``x`` of the images
        ``index``, as augmented in ``epoch``; ``sizes``: their original (h, w), which
        ``imagenet`` draws its crops in."""
        x = v2.functional.to_dtype(x, torch.float32, scale=True)
        if self.augment == Augment.light:
            theta = affine_params(uniforms(self.seed, epoch, index, 4), x.shape[-1])
            x = _sample(x, theta, self.image_size, "nearest")
        elif self.augment == Augment.imagenet:
            if sizes is None:
                raise ValueError("augment=imagenet needs the batch's original image sizes")
            u = uniforms(self.seed, epoch, index, 4 * ATTEMPTS + 1)
            theta = resized_crop_params(u, sizes.cpu())
            x = _sample(x, theta, self.image_size, "bilinear")
        return v2.functional.normalize(x, self.mean, self.std)


def _sample(x: Tensor, theta: Tensor, size: int, mode: str) -> Tensor:
    grid = F.affine_grid(
        theta.to(x.device, x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False
    )
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def normalize_batch(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The eval transform's last two steps on a stored (already cropped) uint8 batch."""
    x = v2.functional.to_dtype(x, torch.float32, scale=True)
    return v2.functional.normalize(x, list(mean), list(std))
