"""A folder-of-images data set that survives real folders: odd modes, stray and corrupt files.

Layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``, or ``ROOT/<class>/*`` split into train
and val by a fixed-seed stratified split. Sub-folders of a class count as that class. Hidden names
and the folders that tools leave in photo collections are ignored at every level (``is_ignored``).
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..config import OnBadImage
from .decode import DECODE_ERRORS, DataError, load_image

log = logging.getLogger(__name__)

Sample = tuple[str, int]

# Folders and files that file managers, notebooks, archivers and NAS boxes leave among photos.
# Names starting with "." (.ipynb_checkpoints, .thumbnails, .Trash-1000, macOS's ._name.jpg
# AppleDouble files, .DS_Store) are hidden and ignored by that rule alone; these are the rest.
TOOL_ARTEFACTS = frozenset(
    {
        "__MACOSX",  # zip made on a Mac: AppleDouble copies of every file
        "@eaDir",  # Synology NAS thumbnails
        "#recycle",  # Synology recycle bin
        "@Recycle",  # QNAP recycle bin
        "$RECYCLE.BIN",  # Windows recycle bin on a removable drive
        "System Volume Information",  # Windows drive metadata
        "lost+found",  # ext file systems
        "Thumbs.db",  # Windows thumbnail cache
        "desktop.ini",
        "__pycache__",
    }
)


def is_ignored(name: str) -> bool:
    """Whether a file or folder name is a hidden name or a known tool artefact."""
    return name.startswith(".") or name in TOOL_ARTEFACTS


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def visible_files(directory: Path, ignored: list[str] | None = None) -> list[Path]:
    """Every file under ``directory`` (recursively, links followed, sorted), ignored names left out.

    torchvision's ``find_classes``/``make_dataset`` take every folder at every depth and offer no
    hook to skip one, so the walk is written here: ignored folders are pruned, never entered.
    ``ignored`` collects what was left out, as paths relative to ``directory``.
    """
    found = []
    for top, dirs, files in os.walk(directory, followlinks=True):
        here = Path(top)
        for name in sorted(dirs):
            if is_ignored(name) and ignored is not None:
                ignored.append(str((here / name).relative_to(directory)) + "/")
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        for name in sorted(files):
            if is_ignored(name):
                if ignored is not None:
                    ignored.append(str((here / name).relative_to(directory)))
            else:
                found.append(here / name)
    return sorted(found)


def log_ignored(ignored: list[str], where: Path) -> None:
    """One INFO line naming what the scan left out (the first few, and how many in all)."""
    if ignored:
        more = f" and {len(ignored) - 8} more" if len(ignored) > 8 else ""
        log.info(
            "ignored %d hidden or tool file(s)/folder(s) in %s: %s%s",
            len(ignored),
            where,
            ", ".join(ignored[:8]),
            more,
        )


def find_classes(directory: Path, ignored: list[str] | None = None) -> list[str]:
    """The class folders of ``directory``: its visible sub-folders, sorted."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError as e:
        raise DataError(f"no class folders in {directory}: it does not exist") from e
    classes = []
    for entry in entries:
        if not entry.is_dir():
            continue
        if is_ignored(entry.name):
            if ignored is not None:
                ignored.append(entry.name + "/")
        else:
            classes.append(entry.name)
    if not classes:
        raise DataError(f"no class folders in {directory}: expected {directory}/<class>/<image>")
    return classes


def scan_classes(
    directory: Path, classes: list[str], ignored: list[str] | None = None
) -> list[Sample]:
    """All image files (by extension) under ``directory/<class>/``; other files are ignored."""
    samples: list[Sample] = []
    empty = []
    for idx, cls in enumerate(classes):
        seen: list[str] = []
        files = [str(p) for p in visible_files(directory / cls, seen) if is_image_file(p.name)]
        if ignored is not None:
            ignored += [f"{cls}/{name}" for name in seen]
        if not files:
            empty.append(cls)
        samples += [(path, idx) for path in files]
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
            if on_bad_image == OnBadImage.error:
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
    ignored: list[str] = []
    train_root = root / train_dir
    if train_root.is_dir():
        classes = find_classes(train_root, ignored)
        train = scan_classes(train_root, classes, ignored)
        val_root = root / val_dir
        if val_root.is_dir():
            val_ignored: list[str] = []
            val_classes = find_classes(val_root, val_ignored)
            if val_classes != classes:
                only_train = sorted(set(classes) - set(val_classes))
                only_val = sorted(set(val_classes) - set(classes))
                raise DataError(
                    f"train and val class folders differ under {root}: only in "
                    f"{train_dir}: {only_train}, only in {val_dir}: {only_val}"
                )
            val = scan_classes(val_root, classes, val_ignored)
            ignored = [f"{train_dir}/{n}" for n in ignored]
            ignored += [f"{val_dir}/{n}" for n in val_ignored]
        else:
            train, val = stratified_split(train, val_split, split_seed)
            ignored = [f"{train_dir}/{n}" for n in ignored]
    else:
        classes = find_classes(root, ignored)
        train, val = stratified_split(scan_classes(root, classes, ignored), val_split, split_seed)
    log_ignored(ignored, root)
    if len(classes) < 2:
        raise DataError(
            f"found a single class ({classes[0]}) under {root}: need at least 2 to classify"
        )
    train = check_images(train, on_bad_image, f"{root} (train)")
    val = check_images(val, on_bad_image, f"{root} (val)")
    return train, val, classes


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
        root: str | Path | None = None,
    ) -> None:
        self.samples = samples
        self.root = root  # the data root: images are named relative to it
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
            if self.on_bad_image == OnBadImage.error:
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
