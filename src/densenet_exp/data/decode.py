"""The bottom of the data package: one image decoded, and the layouts images are stored in.

Every path that reads pixels (the folder dataset, both caches, the streamed splits, predict and
export) decodes through ``load_image``, so they agree pixel for pixel; the cached and streamed
splits bring images to a stored layout with ``layout_geometry``. Nothing here imports the rest of
the data package.
"""

from __future__ import annotations

import logging
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from ..config import OnBadImage

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
# What a broken, truncated or hostile image file raises while PIL decodes it
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """A problem with the user's data, reported before training starts."""


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


def stored_side(image_size: int, eval_crop_ratio: float) -> int:
    """The side of a ``whole`` image: what the eval transform resizes the short side to."""
    return round(image_size / eval_crop_ratio)


def layout_geometry(
    layout: str, image_size: int, eval_crop_ratio: float
) -> tuple[int, v2.Transform]:
    """A layout's stored side and the transform that makes it from a decoded uint8 image (on
    whatever device the image is)."""
    if layout == "center":
        resize = v2.Resize(stored_side(image_size, eval_crop_ratio), antialias=True)
        return image_size, v2.Compose([resize, v2.CenterCrop(image_size)])
    if layout == "whole":
        side = stored_side(image_size, eval_crop_ratio)
        return side, v2.Resize((side, side), antialias=True)
    raise ValueError(f"unknown cache layout {layout!r}; valid choices: center, whole")


def bad_image(path: str, error: str, on_bad_image: str, warned: set[str] | None = None) -> None:
    """``data.on_bad_image``: raise, or warn (once per path in ``warned``) and go on without it."""
    if on_bad_image == OnBadImage.error:
        raise DataError(f"cannot decode image {path}: {error} (data.on_bad_image=error)")
    if warned is None or path not in warned:
        log.warning("skipping image that fails to decode: %s (%s)", path, error)
    if warned is not None:
        warned.add(path)
