"""Data sets and loaders from the ``data`` config node."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config import Augment, AugmentOn, CacheMode, DataConfig, DataName, parse_count
from ..config import node as config_node
from ..process import loader_start_method, loader_worker_init
from . import cache
from .augment import BatchAugment, normalize_batch
from .cache import DecodedSplit
from .digits import ensure_digits
from .imagefolder import (
    DataError,
    ImageFolderDataset,
    Sample,
    build_imagefolder_splits,
    collate_skip_bad,
)
from .synthetic import SyntheticDataset
from .transforms import build_transform, load_image

log = logging.getLogger("densenet_exp")

__all__ = [
    "DataBundle",
    "DataError",
    "Indexed",
    "ResumableSampler",
    "ShardSampler",
    "build_datasets",
    "build_loaders",
    "eval_transform_settings",
    "load_image",
    "resolve_num_workers",
]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]
    # set when the train split is cached: its augmentation, on batches on the training device
    train_on_device: Callable[[Tensor, Tensor, int], Tensor] | None = None
    # set when the val split is cached: its batches' last eval steps (ToDtype, Normalize)
    eval_on_device: Callable[[Tensor], Tensor] | None = None


def eval_transform_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """What predict needs to reproduce validation preprocessing (saved in checkpoints)."""
    return {
        "image_size": data_cfg.image_size,
        "mean": list(data_cfg.mean),
        "std": list(data_cfg.std),
        "eval_crop_ratio": data_cfg.eval_crop_ratio,
    }


def build_datasets(
    data_cfg: DataConfig | Any, seed: int = 0, local_ranks: int = 1, cores: int = 1
) -> DataBundle:
    """The train and val sets of ``data_cfg`` (the typed node, or its plain form).

    ``local_ranks`` share the machine's RAM budget of ``data.cache=auto``; ``cores`` decode.
    """
    d = config_node(DataConfig, data_cfg)
    if d.name == DataName.synthetic:
        size, n_cls = d.image_size, d.synthetic_classes
        train = SyntheticDataset(d.synthetic_train_size, n_cls, size, seed=1)
        val = SyntheticDataset(d.synthetic_val_size, n_cls, size, seed=2)
        # same class templates in val as in train, fresh noise
        val.templates = train.templates
        return DataBundle(train, val, train.classes)

    root = ensure_digits(d.root) if d.name == DataName.digits else d.root
    if root is None:
        raise DataError("data.root is required for data=imagefolder (a folder of class folders)")
    on_bad = d.on_bad_image.value
    train_s, val_s, classes = build_imagefolder_splits(
        root,
        train_dir=d.train_dir,
        val_dir=d.val_dir,
        val_split=d.val_split,
        split_seed=d.split_seed,
        on_bad_image=on_bad,
    )
    common = dict(
        image_size=d.image_size, mean=d.mean, std=d.std, eval_crop_ratio=d.eval_crop_ratio
    )
    train_tf = build_transform(train=True, augment=d.augment.value, **common)
    eval_tf = build_transform(train=False, **common)
    bundle = DataBundle(
        ImageFolderDataset(train_s, classes, train_tf, on_bad, seed=seed, root=root),
        ImageFolderDataset(val_s, classes, eval_tf, on_bad, root=root),
        classes,
    )
    if _cache_wanted(d, len(train_s) + len(val_s), local_ranks):
        _cache(bundle, d, train_s, val_s, root, seed, resolve_num_workers(d.num_workers, cores))
    return bundle


def _cache_wanted(d: DataConfig, n_images: int, local_ranks: int) -> bool:
    """``data.cache``: ``ram``, ``none``, or ``auto`` (ram when it fits the budget; logged)."""
    if d.cache != CacheMode.auto:
        return d.cache == CacheMode.ram
    side = cache.stored_side(d.image_size, d.eval_crop_ratio)
    need, budget = cache.estimate_bytes(n_images, side), cache.ram_budget(local_ranks)
    if need > budget:
        log.info(
            "data.cache=auto: %d images would take %.1f GB decoded, over this rank's RAM budget "
            "of %.1f GB: decoding them every epoch (data.cache=ram to insist)",
            n_images,
            need / 2**30,
            budget / 2**30,
        )
        return False
    return True


def _cache(
    bundle: DataBundle,
    d: DataConfig,
    train_s: list[Sample],
    val_s: list[Sample],
    root: Any,
    seed: int,
    workers: int,
) -> None:
    """Replace the bundle's folder splits by decoded ones (train only with device augmentation)."""
    args = (d.image_size, d.eval_crop_ratio, d.on_bad_image.value, workers)
    bundle.val = cache.decode_split(val_s, bundle.classes, root, "center", *args)
    bundle.eval_on_device = functools.partial(normalize_batch, mean=d.mean, std=d.std)
    cached = [bundle.val]
    if d.augment_on != AugmentOn.loader:
        layout = "whole" if d.augment == Augment.imagenet else "center"
        train = cache.decode_split(train_s, bundle.classes, root, layout, *args)
        bundle.train = train
        bundle.train_on_device = BatchAugment(
            d.augment.value, d.image_size, d.mean, d.std, seed, sizes=train.sizes
        )
        cached.insert(0, train)
    where = "on the training device" if bundle.train_on_device else "per image, in the loader"
    log.info("data.cache: %s; train augmentation %s", cache.describe(cached), where)


class Indexed(Dataset):
    """A data set whose items carry their index, ``(x, y, i)``, so evaluation can name each image.

    An unreadable item stays None (``collate_skip_bad`` drops it).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return None if item is None else (*item, index)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, without touching skipped samples.

    The epoch's order depends only on (seed, epoch), so a resumed run sees exactly the batches the
    interrupted one had not yet trained on.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        """Skip the first ``start_index`` samples of this rank's shard for the current epoch."""
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``, with no padding.

    torch's DistributedSampler pads the last shard with repeats, which would count some
    validation images twice; evaluation sums counts across ranks instead.
    """

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, size, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


MAX_AUTO_WORKERS = 8  # past this, decoding rarely holds a rank back and each worker costs RAM


def resolve_num_workers(value: int | str, cores: int) -> int:
    """``data.num_workers``: a number is kept as given; ``auto`` is what the rank's cores allow.

    ``auto`` leaves one of the rank's cores to the training process itself, so a rank with one
    core loads in-process (0 workers), and never starts more workers than cores (torch warns
    past that, and on a small machine the workers then slow training down).
    """
    workers = parse_count(value, "data.num_workers", 0)
    return max(0, min(MAX_AUTO_WORKERS, cores - 1)) if workers is None else workers


def build_loaders(
    bundle: DataBundle,
    data_cfg: DataConfig | Any,
    rank: int,
    world: int,
    seed: int,
    device: torch.device,
    cores: int = 1,
) -> tuple[DataLoader, DataLoader, ResumableSampler]:
    """This rank's train and val loaders; ``cores``: the rank's share, for ``num_workers=auto``."""
    d = config_node(DataConfig, data_cfg)
    batch = d.batch_size
    if batch < 1:
        raise ValueError(f"data.batch_size must be >= 1, got {batch}")
    per_rank = math.ceil(len(bundle.train) / world)
    if batch > per_rank:
        raise DataError(
            f"data.batch_size={batch} is larger than the training set per rank "
            f"({len(bundle.train)} images / {world} rank(s) = {per_rank}); lower data.batch_size"
        )
    workers = resolve_num_workers(d.num_workers, cores)
    pin = d.pin_memory and device.type == "cuda"
    sampler = ResumableSampler(
        bundle.train, num_replicas=world, rank=rank, shuffle=d.shuffle, seed=seed
    )
    loader_args: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=pin,
        collate_fn=collate_skip_bad,
        worker_init_fn=loader_worker_init if workers else None,
        persistent_workers=d.persistent_workers and workers > 0,
    )
    if workers:
        loader_args["multiprocessing_context"] = loader_start_method()
    generator = torch.Generator().manual_seed(seed + rank)
    # a decoded split hands out whole batches (__getitems__): nothing for workers to do
    batched = dict(num_workers=0, pin_memory=pin, collate_fn=_as_batch)
    train = DataLoader(
        bundle.train,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        generator=generator,
        **(batched if isinstance(bundle.train, DecodedSplit) else loader_args),
    )
    cached_val = isinstance(bundle.val, DecodedSplit)
    val = DataLoader(
        bundle.val if cached_val else Indexed(bundle.val),
        batch_size=batch,
        sampler=ShardSampler(len(bundle.val), rank, world),
        **(batched if cached_val else loader_args),
    )
    return train, val, sampler


def _as_batch(batch: Any) -> Any:
    """The collate of a decoded split: ``__getitems__`` already made the batch."""
    return batch
