"""Random images of any size with a learnable class signal, for benchmarks and tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticDataset(Dataset):
    """Item ``i`` is fixed by ``(seed, i)``: a class template plus noise, label ``i % classes``."""

    def __init__(self, size: int, num_classes: int, image_size: int, seed: int = 0) -> None:
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(num_classes, 3, image_size, image_size, generator=g)
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = index % self.num_classes
        noise = torch.randn(3, self.image_size, self.image_size, generator=g)
        return self.templates[label] + noise, label
