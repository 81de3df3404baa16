"""The one place images become tensors: train, validation and predict all use these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from ..config import Augment

AUGMENTS = tuple(m.value for m in Augment)


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    augment: str = "none",
    eval_crop_ratio: float = 1.0,
) -> v2.Compose:
    """PIL RGB image -> normalised float tensor of ``image_size`` x ``image_size``.

    Eval: resize the short side to ``image_size / eval_crop_ratio`` and center-crop (0.875 is the
    ImageNet habit; 1.0 keeps the whole image). Train adds the chosen augmentation.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown data.augment {augment!r}; valid choices: {', '.join(AUGMENTS)}")
    if not 0.0 < eval_crop_ratio <= 1.0:
        raise ValueError(f"data.eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
    resize = round(image_size / eval_crop_ratio)
    if train and augment == Augment.imagenet:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
        if train and augment == Augment.light:
            # small shifts/rotations/zooms, no flips: safe for digits, text and most objects
            geometry.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def eval_transform(settings: dict[str, Any]) -> v2.Compose:
    """The eval transform from the settings a checkpoint saved (data.eval_transform_settings)."""
    return build_transform(
        settings["image_size"],
        settings["mean"],
        settings["std"],
        train=False,
        eval_crop_ratio=settings["eval_crop_ratio"],
    )
