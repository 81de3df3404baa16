"""``data.cache=disk``: the decoded cache in a file, memory-mapped, reused by later runs.

The RAM cache decodes a folder again in every run and every rank, and must fit in memory. A disk
cache is decoded once per folder (a sweep of 30 runs decodes it once), is paged in by the kernel
on demand (a folder larger than RAM still works, read at disk speed), and ranks on one machine
share its pages instead of holding a copy each.

Each split is two files in ``data.cache_dir`` (default: ``.densenet_exp_cache`` inside the data
folder, which the folder walk ignores as hidden; ``~/.cache/densenet_exp/decoded`` when the data
folder is read-only): ``NAME.u8``, the images as raw uint8 ``(N, 3, S, S)``, and ``NAME.json``,
which images decoded and their original sizes. ``NAME`` holds a fingerprint of everything the
pixels depend on (the split's files with their sizes and modification times, classes, layout,
image size, crop ratio), so a changed folder or setting gets a new file and a stale one is never
read. Rank 0 writes (to temporary names, renamed when complete: a killed run leaves no file that
looks whole); the other ranks wait for it, then map the same file.

numpy's memmap writes the file (torch cannot create one to map), ``torch.from_file`` reads it as
a private mapping: a tensor like any other, whose pages stay on disk until touched.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torch.distributed as dist
import torchvision

from .cache import DecodedSplit, fill_decoded, kept_split
from .decode import DataError
from .streamed import StreamedSplit

log = logging.getLogger("densenet_exp")

FORMAT_VERSION = 2  # bump when the layout of the files or of the pixels in them changes (2: EXIF)
FOLDER_NAME = ".densenet_exp_cache"
# how long the other ranks wait for rank 0's decode (the process group's own timeout is minutes)
WAIT_FOR_WRITER = datetime.timedelta(days=2)
# how long the other ranks wait, after rank 0 failed to write the cache, before failing themselves
KNOCK_ON_GRACE_S = 30.0


def cache_folder(cache_dir: str | None, root: str | Path) -> Path:
    """``data.cache_dir``, or the default: inside the data folder, else under the user's cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = Path(root).expanduser().resolve()
    if os.access(root, os.W_OK):
        return root / FOLDER_NAME
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return home / "densenet_exp" / "decoded" / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def fingerprint(split: StreamedSplit) -> str:
    """A digest of everything a split's cached pixels depend on (module docstring)."""
    h = hashlib.sha256()
    root = Path(split.root) if split.root is not None else None
    # the decoder and the resize are part of the pixels: other versions may round differently
    geometry = [split.layout, split.side, split.image_size, split.eval_crop_ratio]
    versions = [FORMAT_VERSION, PIL.__version__, torchvision.__version__]
    h.update(json.dumps([*versions, *geometry]).encode())
    h.update(json.dumps(split.classes).encode())
    for path, target in split.samples:
        st = os.stat(path)
        name = os.path.relpath(path, root) if root is not None else path
        h.update(f"{name}\0{target}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def disk_split(split: StreamedSplit, folder: Path, name: str, workers: int = 0) -> DecodedSplit:
    """The split decoded into (or found in) ``folder``; rank 0 writes, every rank maps it."""
    stem = folder / f"{name}-{split.layout}-{split.side}px-{fingerprint(split)}"
    writer = not dist.is_initialized() or dist.get_rank() == 0
    # all ranks join the group now, before rank 0 decodes: joining it later would wait for
    # rank 0 under the training group's short timeout
    group = _waiting_group()
    decoded, written = None, False
    try:
        if writer and (decoded := _read(stem, split)) is None:
            _write(split, stem, workers)
        elif writer:
            log.info("data.cache=disk: %s read from %s.u8 (files, settings unchanged)", name, stem)
        written = True
    finally:  # rank 0's error too releases the others, who then fail to read and say so
        if group is not None and not _released(group, written) and not writer:
            _outlive_rank_0()
    if decoded is None:  # written just now, or by rank 0
        decoded = _read(stem, split)
    if decoded is None:
        raise DataError(
            f"rank {dist.get_rank() if dist.is_initialized() else 0} cannot read the decoded cache "
            f"{stem}.u8: rank 0 failed to write it (its error is in the log), or data.cache_dir "
            "is not a folder every machine of the run sees (a shared file system is needed; or "
            "use data.cache=ram)"
        )
    return decoded


def _outlive_rank_0() -> None:
    """Rank 0 failed to write the cache: give it the time to record its own error and end the
    job, so that the job's report leads with that error and not with this rank's knock-on (the
    launcher reports the first rank to stop, and under load this one could be first). The
    launcher ends this rank with SIGTERM, which the training's stop handler would otherwise
    defer to a step that never comes, so SIGTERM ends it at once while it waits. Where nothing
    ends the job for it (another machine's launcher), it stops after the wait, saying why."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        time.sleep(KNOCK_ON_GRACE_S)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _released(group: dist.ProcessGroup, written: bool) -> bool:
    """Every rank learns from rank 0 whether it wrote the cache (the others wait here until it
    is done); the group is left afterwards."""
    flag = torch.tensor([int(written)])
    dist.broadcast(flag, src=0, group=group)
    dist.destroy_process_group(group)
    return bool(flag.item())


def _waiting_group() -> dist.ProcessGroup | None:
    """A gloo group of its own for the other ranks to wait in, for its long timeout: decoding a
    large folder takes far longer than the training group lets a barrier wait."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo", timeout=WAIT_FOR_WRITER)


def _read(stem: Path, split: StreamedSplit) -> DecodedSplit | None:
    """The cached split, or None when its files are missing or incomplete."""
    meta_path, data_path = _files(stem)
    try:
        meta = json.loads(meta_path.read_text())
        size = data_path.stat().st_size
    except (OSError, ValueError):
        return None
    kept, side = meta["kept"], split.side
    if meta.get("version") != FORMAT_VERSION or size != len(kept) * 3 * side * side:
        return None
    images = torch.from_file(str(data_path), shared=False, size=size, dtype=torch.uint8)
    sizes = torch.tensor(meta["sizes"], dtype=torch.int64).view(len(kept), 2)
    return kept_split(split, images.view(len(kept), 3, side, side), sizes, kept, data_path)


def _write(split: StreamedSplit, stem: Path, workers: int) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    n, side = len(split.samples), split.side
    # hidden, and per process: two runs decoding the same folder at once never share a file
    tmp = stem.parent / f".{stem.name}.{os.getpid()}.tmp"
    tmp_meta = stem.parent / f".{stem.name}.{os.getpid()}.json.tmp"
    log.info("data.cache=disk: decoding %d images into %s.u8", n, stem)
    try:
        shape = (max(n, 1), 3, side, side)
        _reserve(tmp, int(np.prod(shape)))
        mapped = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
        images = torch.from_numpy(mapped)
        sizes, kept = fill_decoded(split, images, workers)
        rows = kept.tolist()
        # close the gaps of the files that failed, in place: row j takes image kept[j] >= j, so
        # a chunk never overwrites an image a later chunk still reads
        if len(rows) < n:
            for j in range(0, len(rows), 256):
                chunk = kept[j : j + 256]
                images[j : j + len(chunk)] = images[chunk]
        mapped.flush()
        del images, mapped
        os.truncate(tmp, len(rows) * 3 * side * side)
        meta = {"version": FORMAT_VERSION, "kept": rows, "sizes": sizes[kept].tolist()}
        tmp_meta.write_text(json.dumps(meta))
        meta_path, data_path = _files(stem)
        os.replace(tmp, data_path)
        os.replace(tmp_meta, meta_path)  # last: the mark of a complete cache
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def _reserve(path: Path, size: int) -> None:
    """Allocate the file's blocks before it is mapped: a write to a mapping the disk has no room
    for is a bus error, which kills the process with no message; here it is an error saying so."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            raise DataError(
                f"data.cache=disk: the decoded images need {size / 2**30:.2f} GB in {path.parent}, "
                f"which cannot hold them ({e.strerror}): free space there, set data.cache_dir to "
                "a larger disk, or use data.cache=ram or data.cache=none"
            ) from e


def _files(stem: Path) -> tuple[Path, Path]:
    """A cached split's metadata and images (the stem may hold dots: no with_suffix)."""
    return Path(f"{stem}.json"), Path(f"{stem}.u8")
