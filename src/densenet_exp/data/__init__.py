"""Data sets and loaders from the ``data`` config node."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import (
    Augment,
    AugmentOn,
    CacheMode,
    DataConfig,
    DataName,
    DecodeOn,
    parse_count,
)
from ..config import node as config_node
from ..process import loader_start_method, loader_worker_init
from . import cache, decode, diskcache
from .augment import BatchAugment, normalize_batch
from .batches import Batch, DeviceBatches, device_batches
from .cache import DecodedSplit
from .decode import DataError, load_image
from .digits import ensure_digits
from .imagefolder import (
    ImageFolderDataset,
    Sample,
    build_imagefolder_splits,
    collate_skip_bad,
)
from .readahead import ReadAhead
from .samplers import Indexed, ResumableSampler, ShardSampler
from .streamed import DeviceDecodedLoader, DeviceDecoder, StreamedSplit, check_decode
from .synthetic import SyntheticDataset
from .transforms import build_transform

log = logging.getLogger("densenet_exp")

__all__ = [
    "Batch",
    "DataBundle",
    "DataError",
    "DeviceBatches",
    "Indexed",
    "ResumableSampler",
    "ShardSampler",
    "build_datasets",
    "build_loaders",
    "check_decode",
    "device_batches",
    "eval_transform_settings",
    "load_image",
    "resolve_num_workers",
]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]
    # set when train batches reach the device as uint8 (cached or streamed): their augmentation,
    # called with (images, indices, epoch, original sizes)
    train_on_device: Callable[[Tensor, Tensor, int, Tensor], Tensor] | None = None
    # set when val batches reach the device as uint8: their last eval steps (ToDtype, Normalize)
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
    workers = resolve_num_workers(d.num_workers, cores)
    if _cache_wanted(d, len(train_s) + len(val_s), local_ranks):
        _cache(bundle, d, (train_s, val_s), root, seed, workers)
    elif d.decode == DecodeOn.gpu or d.augment_on == AugmentOn.device:
        _stream(bundle, d, (train_s, val_s), root, seed)
    return bundle


def _cache_wanted(d: DataConfig, n_images: int, local_ranks: int) -> bool:
    """``data.cache``: ``ram``, ``none``, or ``auto`` (ram when it fits the budget; logged)."""
    if d.cache != CacheMode.auto:
        return d.cache in (CacheMode.ram, CacheMode.disk)
    side = decode.stored_side(d.image_size, d.eval_crop_ratio)
    need, budget = cache.estimate_bytes(n_images, side), cache.ram_budget(local_ranks)
    if need > budget:
        log.info(
            "data.cache=auto: %d images would take %.1f GB decoded, over this rank's RAM budget "
            "of %.1f GB: decoding them every epoch (data.cache=disk decodes them once into a "
            "file, data.cache=ram insists)",
            n_images,
            need / 2**30,
            budget / 2**30,
        )
        return False
    return True


Splits = tuple[list[Sample], list[Sample]]  # the train and val samples


def _cache(
    bundle: DataBundle, d: DataConfig, splits: Splits, root: Any, seed: int, workers: int
) -> None:
    """Replace the bundle's folder splits by decoded ones (train only with device augmentation):
    in RAM, or with ``data.cache=disk`` mapped from files in ``data.cache_dir``."""
    train_s, val_s = splits
    args = (d.image_size, d.eval_crop_ratio, d.on_bad_image.value, False)
    folder = diskcache.cache_folder(d.cache_dir, root) if d.cache == CacheMode.disk else None

    def decoded(samples: list[Sample], layout: str, name: str) -> DecodedSplit:
        split = StreamedSplit(samples, bundle.classes, root, layout, *args)
        if folder is None:
            return cache.decode_split(split, workers)
        return diskcache.disk_split(split, folder, name, workers)

    bundle.val = decoded(val_s, "center", "val")
    bundle.eval_on_device = functools.partial(normalize_batch, mean=d.mean, std=d.std)
    cached = [bundle.val]
    if d.augment_on != AugmentOn.loader:
        bundle.train = decoded(train_s, _train_layout(d), "train")
        bundle.train_on_device = BatchAugment(d.augment.value, d.image_size, d.mean, d.std, seed)
        cached.insert(0, bundle.train)
    where = "on the training device" if bundle.train_on_device else "per image, in the loader"
    log.info("data.cache: %s; train augmentation %s", cache.describe(cached), where)
    if d.decode == DecodeOn.gpu:
        log.info("data.decode=gpu: nothing left to decode each epoch, the splits are cached")


def _stream(bundle: DataBundle, d: DataConfig, splits: Splits, root: Any, seed: int) -> None:
    """Uncached splits sent to the device as uint8 batches: the train split, and with
    ``decode=gpu`` the val split too (``streamed``)."""
    train_s, val_s = splits
    gpu = d.decode == DecodeOn.gpu
    args = (d.image_size, d.eval_crop_ratio, d.on_bad_image.value, gpu)
    bundle.train = StreamedSplit(train_s, bundle.classes, root, _train_layout(d), *args)
    bundle.train_on_device = BatchAugment(d.augment.value, d.image_size, d.mean, d.std, seed)
    if gpu:
        bundle.val = StreamedSplit(val_s, bundle.classes, root, "center", *args)
        bundle.eval_on_device = functools.partial(normalize_batch, mean=d.mean, std=d.std)
    log.info(
        "data: decoding every epoch %s; train augmentation on the training device",
        "on the GPU (nvJPEG) for JPEGs, in the loader for the rest" if gpu else "in the loader",
    )


def _train_layout(d: DataConfig) -> str:
    """``imagenet`` crops from the whole image; the others start from the eval center crop."""
    return "whole" if d.augment == Augment.imagenet else "center"


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
) -> tuple[Iterable, Iterable, ResumableSampler]:
    """This rank's train and val loaders; ``cores``: the rank's share, for ``num_workers=auto``.

    A loader yields ``(x, y)`` (per image), ``(x, y, index)`` (val, per image) or, for a cached
    or streamed split, ``(uint8 x, y, index, original sizes)`` for the device to finish."""
    d = config_node(DataConfig, data_cfg)
    check_decode(d, device)
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
    sampler = ResumableSampler(
        bundle.train, num_replicas=world, rank=rank, shuffle=d.shuffle, seed=seed
    )
    make = functools.partial(_loader, d=d, workers=workers, device=device)
    generator = torch.Generator().manual_seed(seed + rank)
    train = make(bundle.train, sampler=sampler, drop_last=True, generator=generator)
    per_image_val = not isinstance(bundle.val, DecodedSplit | StreamedSplit)
    val = make(
        Indexed(bundle.val) if per_image_val else bundle.val,
        sampler=ShardSampler(len(bundle.val), rank, world),
    )
    return train, val, sampler


def _loader(
    dataset: Dataset, d: DataConfig, workers: int, device: torch.device, **kwargs: Any
) -> Iterable:
    """The loader of one split, by its kind: per image, decoded (cached) or streamed."""
    pin = d.pin_memory and device.type == "cuda"
    if isinstance(dataset, DecodedSplit):
        # a decoded split hands out whole batches (__getitems__): nothing for workers to do
        decoded = DataLoader(
            dataset,
            batch_size=d.batch_size,
            num_workers=0,
            pin_memory=pin,
            collate_fn=_as_batch,
            **kwargs,
        )
        # read ahead while a GPU trains (a mapped file's pages may come from disk); on a CPU
        # the thread's gather only competes with the model for the cores (its OpenMP team
        # beside the model's: 0.77x end to end against 0.98x without, disk cache, 2 cores)
        return ReadAhead(decoded) if device.type == "cuda" else decoded
    args: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=pin,
        collate_fn=dataset.collate if isinstance(dataset, StreamedSplit) else collate_skip_bad,
        worker_init_fn=loader_worker_init if workers else None,
        persistent_workers=d.persistent_workers and workers > 0,
    )
    if workers:
        args["multiprocessing_context"] = loader_start_method()
    loader = DataLoader(dataset, batch_size=d.batch_size, **kwargs, **args)
    if not isinstance(dataset, StreamedSplit) or not dataset.encoded:
        return loader
    return DeviceDecodedLoader(loader, DeviceDecoder(dataset, device))


def _as_batch(batch: Any) -> Any:
    """The collate of a decoded split: ``__getitems__`` already made the batch."""
    return batch
