"""Data sets and loaders from the ``data`` config node."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .._compat import choice
from ..process import loader_start_method, loader_worker_init
from .digits import ensure_digits
from .imagefolder import DataError, ImageFolderDataset, build_imagefolder_splits, collate_skip_bad
from .synthetic import SyntheticDataset
from .transforms import build_transform, load_image

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

DATA_NAMES = ("digits", "imagefolder", "synthetic")


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    classes: list[str]


def eval_transform_settings(data_cfg: Any) -> dict[str, Any]:
    """What predict needs to reproduce validation preprocessing (saved in checkpoints)."""
    return {
        "image_size": int(data_cfg["image_size"]),
        "mean": [float(v) for v in data_cfg["mean"]],
        "std": [float(v) for v in data_cfg["std"]],
        "eval_crop_ratio": float(data_cfg["eval_crop_ratio"]),
    }


def build_datasets(data_cfg: Any, seed: int = 0) -> DataBundle:
    name = choice(data_cfg["name"])
    if name not in DATA_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid choices: {', '.join(DATA_NAMES)}")
    if name == "synthetic":
        size, n_cls = int(data_cfg["image_size"]), int(data_cfg["synthetic_classes"])
        train = SyntheticDataset(int(data_cfg["synthetic_train_size"]), n_cls, size, seed=1)
        val = SyntheticDataset(int(data_cfg["synthetic_val_size"]), n_cls, size, seed=2)
        # same class templates in val as in train, fresh noise
        val.templates = train.templates
        return DataBundle(train, val, train.classes)

    root = ensure_digits(data_cfg["root"]) if name == "digits" else data_cfg["root"]
    if root is None:
        raise DataError("data.root is required for data=imagefolder (a folder of class folders)")
    on_bad = choice(data_cfg["on_bad_image"])
    train_s, val_s, classes = build_imagefolder_splits(
        root,
        train_dir=data_cfg["train_dir"],
        val_dir=data_cfg["val_dir"],
        val_split=float(data_cfg["val_split"]),
        split_seed=int(data_cfg["split_seed"]),
        on_bad_image=on_bad,
    )
    common = dict(
        image_size=int(data_cfg["image_size"]),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        eval_crop_ratio=float(data_cfg["eval_crop_ratio"]),
    )
    train_tf = build_transform(train=True, augment=choice(data_cfg["augment"]), **common)
    eval_tf = build_transform(train=False, **common)
    return DataBundle(
        ImageFolderDataset(train_s, classes, train_tf, on_bad, seed=seed, root=root),
        ImageFolderDataset(val_s, classes, eval_tf, on_bad, root=root),
        classes,
    )


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
    text = str(value).strip().lower()
    if text == "auto":
        return max(0, min(MAX_AUTO_WORKERS, cores - 1))
    try:
        workers = int(text)
    except ValueError:
        raise ValueError(
            f"data.num_workers must be 'auto' or a number >= 0, got {value!r}"
        ) from None
    if workers < 0:
        raise ValueError(f"data.num_workers must be 'auto' or a number >= 0, got {workers}")
    return workers


def build_loaders(
    bundle: DataBundle,
    data_cfg: Any,
    rank: int,
    world: int,
    seed: int,
    device: torch.device,
    cores: int = 1,
) -> tuple[DataLoader, DataLoader, ResumableSampler]:
    """This rank's train and val loaders; ``cores``: the rank's share, for ``num_workers=auto``."""
    batch = int(data_cfg["batch_size"])
    if batch < 1:
        raise ValueError(f"data.batch_size must be >= 1, got {batch}")
    per_rank = math.ceil(len(bundle.train) / world)
    if batch > per_rank:
        raise DataError(
            f"data.batch_size={batch} is larger than the training set per rank "
            f"({len(bundle.train)} images / {world} rank(s) = {per_rank}); lower data.batch_size"
        )
    workers = resolve_num_workers(data_cfg["num_workers"], cores)
    pin = bool(data_cfg["pin_memory"]) and device.type == "cuda"
    sampler = ResumableSampler(
        bundle.train, num_replicas=world, rank=rank, shuffle=bool(data_cfg["shuffle"]), seed=seed
    )
    loader_args: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=pin,
        collate_fn=collate_skip_bad,
        worker_init_fn=loader_worker_init if workers else None,
        persistent_workers=bool(data_cfg["persistent_workers"]) and workers > 0,
    )
    if workers:
        loader_args["multiprocessing_context"] = loader_start_method()
    generator = torch.Generator().manual_seed(seed + rank)
    train = DataLoader(
        bundle.train,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        generator=generator,
        **loader_args,
    )
    val = DataLoader(
        Indexed(bundle.val),
        batch_size=batch,
        sampler=ShardSampler(len(bundle.val), rank, world),
        **loader_args,
    )
    return train, val, sampler
