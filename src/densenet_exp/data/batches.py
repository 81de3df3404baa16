"""What the engine reads: a split's batches on the training device, ready for the model.

The loaders' formats differ (per-image tensors; a cached or streamed split's uint8 images with
their indices and original sizes) and so does where the last steps run (the loader, or the device:
``DataBundle.train_on_device``/``eval_on_device``). ``DeviceBatches`` hides both: it positions the
sampler and the per-sample augmentation on an epoch, moves each batch to the device, finishes it
there, and hands out one ``Batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

# x (uint8 on the device), the images' indices, the epoch, their original sizes -> model input
Finish = Callable[[Tensor, Tensor | None, int, Tensor | None], Tensor]


class Batch(NamedTuple):
    x: Tensor  # the images as the model takes them (augmented, normalised), on the device
    y: Tensor  # their classes, on the device
    index: Tensor | None  # each image's index in its split (per-image predictions), if known
    position: int  # the batch's place in its epoch: where a resumed epoch goes on from


class DeviceBatches:
    """One split's loader as device-ready ``Batch``es, epoch by epoch."""

    def __init__(
        self,
        loader: Iterable[Any],
        device: torch.device,
        finish: Finish | None = None,
        sampler: Any = None,
        dataset: Any = None,
        batch_size: int = 1,
    ) -> None:
        self.loader, self.device, self.finish = loader, device, finish
        self.sampler, self.dataset, self.batch_size = sampler, dataset, batch_size

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start`` on (a resumed epoch skips the rest)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(start * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):  # per-sample augmentation from (seed, epoch, index)
            self.dataset.set_epoch(epoch)
        for position, raw in enumerate(self.loader, start=start):
            if raw is None:  # every image of this batch failed to decode
                continue
            x, y, *rest = raw
            index = rest[0] if rest else None
            x = x.to(self.device, non_blocking=True)
            if self.finish is not None:
                x = self.finish(x, index, epoch, rest[1] if len(rest) > 1 else None)
            yield Batch(x, y.to(self.device, non_blocking=True), index, position)


def device_batches(
    bundle: Any,
    loaders: tuple[Iterable[Any], Iterable[Any], Any],
    batch_size: int,
    device: torch.device,
) -> tuple[DeviceBatches, DeviceBatches]:
    """The train and val splits of ``bundle`` (a ``DataBundle``) as the engine reads them, from
    ``build_loaders``'s ``(train loader, val loader, train sampler)``."""
    train_loader, val_loader, sampler = loaders
    train_finish = bundle.train_on_device
    val_finish = None
    if bundle.eval_on_device is not None:
        normalize = bundle.eval_on_device

        def val_finish(x: Tensor, index: Tensor | None, epoch: int, sizes: Tensor | None) -> Tensor:
            return normalize(x)

    train = DeviceBatches(train_loader, device, train_finish, sampler, bundle.train, batch_size)
    return train, DeviceBatches(val_loader, device, val_finish)
