"""Splits that are not cached but go to the device as uint8 batches, decoded every epoch.

Two cases share the cache's layouts (``decode.layout_geometry``) and its device augmentation
(``augment.BatchAugment``), so a streamed split trains exactly like a cached one:

- ``data.decode=cpu`` with ``data.augment_on=device``: the loader's workers decode with PIL and
  bring each image to its layout; the device gets one uint8 tensor per batch.
- ``data.decode=gpu``: the workers only read the files; a JPEG in RGB or greyscale travels as its
  bytes and is decoded on the GPU with nvJPEG (``torchvision.io.decode_jpeg``, one batched call),
  then brought to its layout there. Anything else (PNG, CMYK JPEG, 16-bit, ...) the worker
  decodes with PIL, as the folder path would, and sends whole.

nvJPEG's IDCT and chroma upsampling are not libjpeg's, so GPU-decoded pixels may differ from
PIL's by a few levels of 255 (on the CPU, ``decode_jpeg`` and PIL agree exactly; tested).
A batch is ``(images, targets, indices, original sizes)``, as a cached split's.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..config import AugmentOn, ConfigError, DataConfig, DecodeOn
from .decode import DECODE_ERRORS, bad_image, layout_geometry, load_image, orientation
from .imagefolder import Sample
from .readahead import ReadAhead

log = logging.getLogger("densenet_exp")

# torchvision 0.29 deprecates its decoders for TorchCodec, a separate package tied to a torch
# version; until torchvision drops them they are the nvJPEG that torch 2.14 ships with. A filter
# set once here, not catch_warnings per call: that is not thread-safe, and the decode has a thread.
warnings.filterwarnings(
    "ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning
)

# PIL modes whose JPEGs nvJPEG decodes to the RGB PIL would give (CMYK/YCCK it converts its own way)
NVJPEG_MODES = ("RGB", "L")


def check_decode(data_cfg: DataConfig, device: torch.device | None = None) -> None:
    """``data.decode=gpu`` needs device augmentation and, once the device is known, a GPU."""
    if data_cfg.decode != DecodeOn.gpu:
        return
    if data_cfg.augment_on == AugmentOn.loader:
        raise ConfigError(
            "data.decode=gpu decodes on the training device, so the train augmentation runs there "
            "too: data.augment_on=loader cannot go with it (valid choices: auto, device)"
        )
    if device is not None and device.type != "cuda":
        raise ConfigError(
            f"data.decode=gpu decodes JPEGs with nvJPEG on the training GPU, but this run trains "
            f"on {device}; valid choices here: cpu"
        )


class StreamedSplit(Dataset):
    """Items ``(payload, target, index, (h, w))`` of a folder split for device batches.

    ``encoded=False``: the payload is the image in ``layout`` (uint8, decoded by PIL here).
    ``encoded=True``: a JPEG's bytes (1-D uint8) when nvJPEG can take it, else the whole decoded
    image (3-D uint8). An unreadable file yields ``None`` (``collate`` drops it).
    """

    def __init__(
        self,
        samples: list[Sample],
        classes: list[str],
        root: str | Path | None,
        layout: str,
        image_size: int,
        eval_crop_ratio: float,
        on_bad_image: str,
        encoded: bool,
    ) -> None:
        self.samples, self.classes, self.root = samples, classes, root
        self.layout, self.encoded, self.on_bad_image = layout, encoded, on_bad_image
        self.side, self.geometry = layout_geometry(layout, image_size, eval_crop_ratio)
        self.image_size, self.eval_crop_ratio = image_size, eval_crop_ratio
        self.warned: set[str] = set()  # bad files, warned about once (per worker)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, tuple[int, int]] | None:
        path, target = self.samples[i]
        try:
            payload, size = self._read(path)
        except DECODE_ERRORS as e:
            bad_image(path, f"{type(e).__name__}: {e}", self.on_bad_image, self.warned)
            return None
        return payload, target, i, size

    def _read(self, path: str) -> tuple[Tensor, tuple[int, int]]:
        if self.encoded:
            with Image.open(path) as header:  # reads the header only: format, mode and size
                # nvJPEG ignores EXIF orientation: a rotated photo is decoded here, upright
                jpeg = header.format == "JPEG" and header.mode in NVJPEG_MODES
                jpeg = jpeg and orientation(header) == 1
                w, h = header.size
            if jpeg:
                with open(path, "rb") as f:
                    return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8), (h, w)
        image = v2.functional.to_image(load_image(path))
        h, w = image.shape[-2:]
        return (image if self.encoded else self.geometry(image)), (h, w)

    def collate(self, batch: list[Any]) -> tuple[Any, Tensor, Tensor, Tensor] | None:
        """The loader's batch; encoded payloads stay a list (they differ in size and kind)."""
        batch = [item for item in batch if item is not None]
        if not batch:
            return None
        payloads, targets, index, sizes = zip(*batch, strict=True)
        images = list(payloads) if self.encoded else torch.stack(payloads)
        return images, torch.tensor(targets), torch.tensor(index), torch.tensor(sizes)


class DeviceDecoder:
    """An encoded split's batch, decoded on ``device`` and brought to its layout there."""

    def __init__(self, split: StreamedSplit, device: torch.device | str) -> None:
        self.split, self.device = split, torch.device(device)
        self.warned: set[str] = set()

    def __call__(self, batch: tuple[list[Tensor], Tensor, Tensor, Tensor]) -> Any:
        payloads, targets, index, sizes = batch
        images = self._decode(payloads, index)
        keep = [k for k, image in enumerate(images) if image is not None]
        if not keep:
            return None
        x = torch.stack([self.split.geometry(images[k]) for k in keep])
        rows = torch.tensor(keep)
        return x, targets[rows], index[rows], sizes[rows]

    def _decode(self, payloads: list[Tensor], index: Tensor) -> list[Tensor | None]:
        out: list[Tensor | None] = [
            p.to(self.device, non_blocking=True) if p.dim() == 3 else None for p in payloads
        ]
        jpegs = [k for k, p in enumerate(payloads) if p.dim() == 1]
        if not jpegs:
            return out
        try:  # one call for the batch: nvJPEG decodes it in parallel
            batch = [payloads[k] for k in jpegs]
            decoded: list[Tensor | None] = list(_decode_jpeg(batch, self.device))
        except RuntimeError:  # one bad file fails the whole call: find it
            decoded = [self._one(payloads[k], int(index[k])) for k in jpegs]
        for k, image in zip(jpegs, decoded, strict=True):
            out[k] = image
        return out

    def _one(self, data: Tensor, i: int) -> Tensor | None:
        """One JPEG: nvJPEG, else PIL (it reads some files nvJPEG refuses), else a bad image."""
        try:
            return _decode_jpeg(data, self.device)
        except RuntimeError:
            pass
        path = self.split.samples[i][0]
        try:
            image = load_image(io.BytesIO(data.numpy().tobytes()))
        except DECODE_ERRORS as e:
            bad_image(path, f"{type(e).__name__}: {e}", self.split.on_bad_image, self.warned)
            return None
        return v2.functional.to_image(image).to(self.device)


def _decode_jpeg(data: Tensor | list[Tensor], device: torch.device) -> Any:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class DeviceDecodedLoader(ReadAhead):
    """A loader of encoded batches that yields them decoded on the device (``None`` stays).

    The next batch decodes in a thread (on a CUDA side stream) while the current one trains:
    nvJPEG's host-side work and the per-image resizes' launches then overlap the model's step
    instead of adding to it.
    """

    def __init__(self, loader: DataLoader, decoder: DeviceDecoder) -> None:
        super().__init__(loader, decoder, decoder.device)
        self.decoder = decoder
