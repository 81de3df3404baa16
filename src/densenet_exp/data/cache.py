"""Decode once: every image of a split as uint8 at the size its transform needs, kept in RAM.

Decoding (PIL) and the per-image resize are most of what a folder costs per epoch, and they give
the same pixels every epoch. A cached split stores, per image, what the transform would compute
before its first random step:

- ``center``: the eval geometry, ``Resize(image_size / eval_crop_ratio)`` then
  ``CenterCrop(image_size)`` (the validation split; and the train split for ``augment=light`` or
  ``none``, whose random affine comes after that crop). Evaluation from the cache therefore sees
  exactly the tensors it would see from the folder (tested).
- ``whole``: for ``augment=imagenet``, the whole image resized to a square of side
  ``image_size / eval_crop_ratio`` (aspect ratio given up for a fixed size, so a batch is one
  tensor), with its original height and width: ``augment.BatchAugment`` draws the random crop in
  the original's coordinates, as ``RandomResizedCrop`` would, and samples it from the square.

A cached split yields whole batches ``(uint8 images, classes, indices, original sizes)`` through
``__getitems__`` (no per-image Python work in the loader); the training device turns them into
normalised floats. The one decode is ``streamed.StreamedSplit``'s, run once by ``decode_split``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..process import loader_start_method, loader_worker_init
from .imagefolder import Sample

if TYPE_CHECKING:  # for annotations only: streamed builds on the cache
    from .streamed import StreamedSplit

log = logging.getLogger("densenet_exp")

# the share of the machine's available memory that data.cache=auto may fill (all ranks together)
RAM_BUDGET_SHARE = 0.5
# decoding into a cache: images timed in-process first, and the seconds it takes to start the
# loader workers for the rest (spawned processes importing torch: ~4.5 s each pass, 2-core VM)
PROBE_IMAGES = 32
WORKER_START_S = 5.0


class DecodedSplit(Dataset):
    """A split decoded once: ``images`` (N, 3, S, S) uint8, ``targets`` (N,), ``sizes`` (N, 2)."""

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        sizes: Tensor,
        samples: list[Sample],
        classes: list[str],
        root: str | Path | None,
        layout: str,
        where: Path | None = None,
    ) -> None:
        self.images, self.targets, self.sizes = images, targets, sizes
        self.where = where  # the file the images are mapped from (data.cache=disk), or None: RAM
        self.samples = samples  # the images that decoded, in order: their names for predictions
        self.classes = classes
        self.root = root
        self.layout = layout  # "center" or "whole" (module docstring)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The batch ``(images, targets, indices, original sizes)``, as a device split's."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        # index_select, not images[index]: its binding releases the GIL (indexing's does not),
        # so a read-ahead thread faulting a mapped file's pages in leaves the training step be
        images = torch.index_select(self.images, 0, index)
        return images, self.targets[index], index, self.sizes[index]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, Tensor]:
        return self.images[i], int(self.targets[i]), i, self.sizes[i]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes


def estimate_bytes(n_images: int, side: int) -> int:
    return n_images * 3 * side * side


def ram_budget(local_ranks: int) -> int:
    """Bytes one rank's cache may take: a share of the memory available now, split by ranks."""
    available = _available_memory()
    return int(available * RAM_BUDGET_SHARE / max(1, local_ranks))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def decode_split(split: StreamedSplit, workers: int = 0) -> DecodedSplit:
    """Decode every image of a loader-decoded ``split`` once (``workers`` processes) into RAM, in
    its layout; the files that fail are left out (``split`` applies ``data.on_bad_image``)."""
    images = torch.empty(len(split.samples), 3, split.side, split.side, dtype=torch.uint8)
    sizes, kept = fill_decoded(split, images, workers)
    if len(kept) < len(split.samples):
        images, sizes = images[kept], sizes[kept]
    return kept_split(split, images, sizes, kept.tolist())


def kept_split(
    split: StreamedSplit, images: Tensor, sizes: Tensor, kept: list[int], where: Path | None = None
) -> DecodedSplit:
    """The decoded split of ``split``'s images ``kept`` (rows of ``images`` and ``sizes``)."""
    samples = [split.samples[i] for i in kept]
    targets = torch.tensor([t for _, t in samples], dtype=torch.int64)
    return DecodedSplit(
        images, targets, sizes, samples, split.classes, split.root, split.layout, where
    )


def fill_decoded(split: StreamedSplit, images: Tensor, workers: int = 0) -> tuple[Tensor, Tensor]:
    """Decode ``split`` into ``images[i]`` (RAM or a mapped file): the original sizes of all its
    images (N, 2) and the indices of those that decoded.

    The first images decode in this process, timed; the rest go to ``workers`` processes only
    when that saves more than starting them costs (each imports torch: seconds), so a small
    folder, or one worker (which decodes no faster than this process), does not wait for them.
    """
    n = len(split.samples)
    sizes = torch.zeros(n, 2, dtype=torch.int64)
    keep = torch.zeros(n, dtype=torch.bool)

    def take(batch: list[Any]) -> None:
        for image, _, i, size in filter(None, batch):
            images[i], sizes[i], keep[i] = image, torch.tensor(size), True

    probe = min(n, PROBE_IMAGES)
    start = time.perf_counter()
    take([split[i] for i in range(probe)])
    per_image = (time.perf_counter() - start) / max(probe, 1)
    rest = range(probe, n)
    saved = len(rest) * per_image * (1 - 1 / max(workers, 1))  # the seconds workers would save
    use = workers if workers > 1 and saved > WORKER_START_S else 0
    parallel: dict[str, Any] = {}
    if use:  # the same process settings as the training loader's workers
        parallel = dict(
            worker_init_fn=loader_worker_init, multiprocessing_context=loader_start_method()
        )
    # its own generator: a DataLoader draws its workers' seed from the global RNG otherwise, and
    # the model initialised next would then depend on whether the data was cached
    loader = DataLoader(
        Subset(split, rest),
        batch_size=64,
        num_workers=use,
        collate_fn=list,
        generator=torch.Generator(),
        **parallel,
    )
    for batch in loader:
        take(batch)
    return sizes, keep.nonzero().flatten()


def describe(splits: Sequence[DecodedSplit]) -> str:
    n = sum(len(s) for s in splits)
    mb = sum(s.nbytes for s in splits) / 2**20
    files = [str(s.where) for s in splits if s.where is not None]
    where = "in RAM" if not files else "in " + ", ".join(files) + " (memory-mapped)"
    return f"{n:,} images decoded once, {mb:,.1f} MB of uint8 {where}"
