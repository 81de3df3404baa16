"""A folder-of-images data set that survives real folders: odd modes, stray and corrupt files.

Layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``, or ``ROOT/<class>/*`` split into train
and val by a fixed-seed stratified split. Scanning reuses torchvision's ``find_classes`` and
``make_dataset``; what is added here is the checking and the error messages.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .transforms import load_image

log = logging.getLogger(__name__)

Sample = tuple[str, int]
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """A problem with the user's data, reported before training starts."""


def scan_classes(directory: Path, class_to_idx: dict[str, int] | None = None) -> list[Sample]:
    """All image files (by extension) under ``directory/<class>/``; non-image files are ignored."""
    if class_to_idx is None:
        _, class_to_idx = find_classes(str(directory))
    samples = make_dataset(
        str(directory), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
    )
    counts = defaultdict(int)
    for _, idx in samples:
        counts[idx] += 1
    empty = [c for c, i in class_to_idx.items() if counts[i] == 0]
    if empty:
        raise DataError(
            f"class folder(s) with no images in {directory}: {', '.join(sorted(empty))} "
            f"(image extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return sorted(samples)


def check_images(samples: list[Sample], on_bad_image: str, what: str) -> list[Sample]:
    """Drop (or raise on) files PIL cannot identify. Reads headers only, so it is cheap.

    Files that identify but fail to decode are caught later, per item, by the data set.
    """
    good, bad = [], []
    for path, idx in samples:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - header parsed
        except DECODE_ERRORS as e:
            if on_bad_image == "error":
                raise DataError(f"unreadable image {path}: {e} (data.on_bad_image=error)") from e
            bad.append(path)
            continue
        good.append((path, idx))
    if bad:
        log.warning(
            "skipping %d unreadable image(s) in %s: %s%s",
            len(bad),
            what,
            ", ".join(bad[:10]),
            " ..." if len(bad) > 10 else "",
        )
    if not good:
        raise DataError(f"no readable images in {what} ({len(bad)} file(s) failed to open)")
    return good


def stratified_split(
    samples: list[Sample], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class, a fixed-seed share of the files goes to val (at least one if the class has 2+)."""
    if not 0.0 < val_split < 1.0:
        raise DataError(
            f"data.val_split must be in (0, 1) when there is no val folder, got {val_split}"
        )
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s[1]].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for idx in sorted(by_class):
        items = sorted(by_class[idx])
        rng.shuffle(items)
        n_val = max(1, round(len(items) * val_split)) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return sorted(train), sorted(val)


def build_imagefolder_splits(
    root: str | Path,
    train_dir: str = "train",
    val_dir: str = "val",
    val_split: float = 0.2,
    split_seed: int = 0,
    on_bad_image: str = "skip",
) -> tuple[list[Sample], list[Sample], list[str]]:
    """Train and val samples and the class names, with every check a user's folder needs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder")
    train_root = root / train_dir
    if train_root.is_dir():
        classes, class_to_idx = _classes(train_root)
        train = scan_classes(train_root, class_to_idx)
        val_root = root / val_dir
        if val_root.is_dir():
            val_classes, _ = _classes(val_root)
            if val_classes != classes:
                only_train = sorted(set(classes) - set(val_classes))
                only_val = sorted(set(val_classes) - set(classes))
                raise DataError(
                    f"train and val class folders differ under {root}: only in "
                    f"{train_dir}: {only_train}, only in {val_dir}: {only_val}"
                )
            val = scan_classes(val_root, class_to_idx)
        else:
            train, val = stratified_split(train, val_split, split_seed)
    else:
        classes, class_to_idx = _classes(root)
        train, val = stratified_split(scan_classes(root, class_to_idx), val_split, split_seed)
    if len(classes) < 2:
        raise DataError(
            f"found a single class ({classes[0]}) under {root}: need at least 2 to classify"
        )
    train = check_images(train, on_bad_image, f"{root} (train)")
    val = check_images(val, on_bad_image, f"{root} (val)")
    return train, val, classes


def _classes(directory: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(directory))
    except FileNotFoundError as e:
        raise DataError(
            f"no class folders in {directory}: expected {directory}/<class>/<image>"
        ) from e


class ImageFolderDataset(Dataset):
    """(image tensor, class index) pairs; a file that fails to decode yields ``None``.

    ``collate_skip_bad`` drops those from the batch, so one bad file costs one sample, not the run.
    """

    def __init__(
        self,
        samples: list[Sample],
        classes: list[str],
        transform: Callable,
        on_bad_image: str,
        seed: int | None = None,
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.seed = seed
        self.epoch = 0
        self._warned: set[str] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        path, target = self.samples[index]
        try:
            image = load_image(path)
        except DECODE_ERRORS as e:
            if self.on_bad_image == "error":
                raise DataError(f"cannot decode image {path}: {e} (data.on_bad_image=error)") from e
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping image that fails to decode: %s (%s)", path, e)
            return None
        if self.seed is None:
            return self.transform(image), target
        # Augmentation randomness is a function of (seed, epoch, index) alone, not of which worker
        # loads the item or what ran before: a resumed run and any num_workers see the same crops.
        # (default_generator.manual_seed, not torch.manual_seed: that also queues a lazy CUDA
        # seeding call, which records a stack trace per item - milliseconds each.)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
            )
            return self.transform(image), target


def collate_skip_bad(batch: list[Any]) -> Any:
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None
