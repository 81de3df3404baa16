"""Samplers of the train and val loaders, and the index-carrying wrapper of folder splits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler, Sampler


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
