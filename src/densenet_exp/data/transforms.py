"""The one place images become tensors: train, validation and predict all use these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from ..config import Augment

AUGMENTS = tuple(m.value for m in Augment)
EXIF_ORIENTATION = 0x0112


def load_image(path: str | IO[bytes]) -> Image.Image:
    """Open any PIL-readable image (a path or a binary file) as 8-bit RGB.

    Palette and RGBA go through RGBA so transparency does not pick up garbage colours; 16/32-bit
    integer and float images are rescaled to 0..255 (``convert("RGB")`` would clip them to white);
    an EXIF orientation is applied (torchvision's ImageFolder ignores it, and trains on sideways
    photos).
    """
    with Image.open(path) as img:
        img.load()
        if orientation(img) != 1:  # a phone's portrait photo: stored sideways, shown upright
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            if img.mode == "I" and arr.max() <= 255:
                top = 255.0
            arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
            return Image.fromarray(arr, mode="L").convert("RGB")
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGB", img.size, (255, 255, 255))
            rgba = img.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: stored as shown). Cameras write it instead of rotating the
    pixels; viewers apply it, so the image a user sees is the rotated one."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF (camera firmware varies): the pixels are still fine
        return 1


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
    if train and augment == "imagenet":
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
        if train and augment == "light":
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
