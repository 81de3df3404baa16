"""data.cache=disk: the RAM cache's pixels in a memory-mapped file, reused while the folder and
the settings are unchanged, decoded again when either changes."""

import errno
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg
from PIL import Image
from test_streamed import FOLDER, data_cfg, photos  # noqa: F401  (photos is a fixture)
from torch.utils.data import DataLoader

from densenet_exp import train
from densenet_exp.data import DataError, build_datasets, build_loaders, cache, diskcache
from densenet_exp.data.imagefolder import build_imagefolder_splits
from densenet_exp.data.readahead import ReadAhead
from densenet_exp.distributed import RankFailedError

CPU = torch.device("cpu")


def same_split(a, b) -> None:
    assert a.samples == b.samples and a.classes == b.classes
    for name in ("images", "targets", "sizes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def cache_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())}


@pytest.fixture
def folder(photos):  # noqa: F811  (test_streamed's photo folder, under a name of this module)
    return photos


@pytest.fixture
def broken(folder):
    """The photo folder with a JPEG cut short in the train split: its header reads, so the
    folder scan keeps it, and its decode fails (the cache leaves out a row it had reserved)."""
    whole = (folder / "train" / "dog" / "0.jpg").read_bytes()
    (folder / "train" / "dog" / "9.jpg").write_bytes(whole[: len(whole) // 2])
    return folder


def test_the_disk_cache_holds_the_ram_cache_and_a_second_run_reads_it(
    broken, tmp_path, monkeypatch
):
    ram = build_datasets(data_cfg(broken, "data.cache=ram", "data.augment=imagenet"), seed=3)
    disk = build_datasets(
        data_cfg(
            broken, "data.cache=disk", f"data.cache_dir={tmp_path / 'dc'}", "data.augment=imagenet"
        ),
        seed=3,
    )
    assert len(disk.train) == 15  # the undecodable file is left out, as in RAM
    same_split(ram.train, disk.train)
    same_split(ram.val, disk.val)
    files = cache_files(tmp_path / "dc")
    assert len(files) == 4  # images and metadata of two splits, no temporary file left
    for split in (disk.train, disk.val):
        assert split.where.name in files and split.where.stat().st_size == split.images.nbytes

    # the mapped split's loader gives the RAM one's batches, read a batch ahead in a thread as
    # on a GPU (on a CPU the loader is the plain one: the thread would compete for the cores)
    d_ram = data_cfg(broken, "data.cache=ram", "data.augment=imagenet")
    d_disk = data_cfg(broken, "data.cache=disk", f"data.cache_dir={tmp_path / 'dc'}")
    (ram_train, ram_val, _), (disk_train, disk_val, _) = (
        build_loaders(ram, d_ram, 0, 1, 3, CPU),
        build_loaders(disk, d_disk, 0, 1, 3, CPU),
    )
    assert not isinstance(disk_train, ReadAhead)
    on_gpu, _, _ = build_loaders(disk, d_disk, 0, 1, 3, torch.device("cuda"))  # not iterated
    assert isinstance(on_gpu, ReadAhead)
    for ram_loader, disk_loader in ((ram_train, ReadAhead(disk_train)), (ram_val, disk_val)):
        pairs = list(zip(ram_loader, disk_loader, strict=True))
        assert len(pairs) == len(ram_loader) > 1
        for a, b in pairs:
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(diskcache, "fill_decoded", no_decoding)
    again = build_datasets(
        data_cfg(
            broken, "data.cache=disk", f"data.cache_dir={tmp_path / 'dc'}", "data.augment=imagenet"
        ),
        seed=3,
    )
    same_split(ram.train, again.train)
    assert cache_files(tmp_path / "dc") == files


def test_a_changed_file_setting_or_incomplete_cache_is_decoded_again(folder, tmp_path):
    def build(*extra):
        return build_datasets(data_cfg(folder, "data.cache=disk", *extra), seed=0)

    first = build()

    # one train image rewritten: the train split gets a new file, val keeps its own
    path = folder / "train" / "owl" / "0.jpg"
    before = first.train.images[[s[0] for s in first.train.samples].index(str(path))].clone()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    os.utime(path, ns=(1, 1))
    changed = build()
    assert changed.train.where != first.train.where and changed.val.where == first.val.where
    i = [s[0] for s in changed.train.samples].index(str(path))
    assert not torch.equal(changed.train.images[i], before)
    same_split(changed.train, build_datasets(data_cfg(folder, "data.cache=ram"), seed=0).train)

    # another image size is another file
    assert build("data.image_size=12").train.where not in {changed.train.where, first.train.where}

    # a truncated image file (a crash, a full disk) is never read: decoded again, whole (a copy
    # first: touching a mapping past the end of its truncated file is a bus error)
    expected = changed.train.images.clone()
    with open(changed.train.where, "r+b") as f:
        f.truncate(100)
    repaired = build()
    assert repaired.train.where == changed.train.where
    assert torch.equal(repaired.train.images, expected)


def test_the_default_cache_folder_is_in_the_data_folder_and_not_a_class(folder):
    flat = folder / "train"  # class folders directly in the root, split by data.val_split
    d = data_cfg(flat, "data.cache=disk", "data.val_split=0.4")
    first = build_datasets(d, seed=0)
    assert first.train.where.parent == flat / ".densenet_exp_cache"
    # the walk ignores it: the same classes and samples the second time, now that it is there
    second = build_datasets(d, seed=0)
    assert second.classes == first.classes == ["cat", "dog", "owl"]
    assert second.train.samples == first.train.samples and len(first.train) + len(first.val) == 15
    train, val, _ = build_imagefolder_splits(flat, "train", "val", 0.4, 0, "skip")
    assert [s[0] for s in train + val] == [s[0] for s in first.train.samples + first.val.samples]


def test_a_read_only_data_folder_caches_under_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(diskcache.os, "access", lambda path, mode: False)  # as if read-only
    a = diskcache.cache_folder(None, tmp_path / "data_a")
    b = diskcache.cache_folder(None, tmp_path / "data_b")
    assert a.parent == tmp_path / "xdg" / "densenet_exp" / "decoded" and a != b
    assert diskcache.cache_folder("~/x", tmp_path) == Path.home() / "x"  # given: as given


def test_a_full_disk_is_an_error_that_says_so_and_leaves_no_file(folder, tmp_path, monkeypatch):
    def no_room(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskcache.os, "posix_fallocate", no_room)
    d = data_cfg(folder, "data.cache=disk", f"data.cache_dir={tmp_path / 'full'}")
    with pytest.raises(DataError, match=r"need 0\.00 GB in .*full.*No space left.*data\.cache_dir"):
        build_datasets(d, seed=0)
    assert list((tmp_path / "full").iterdir()) == []


def test_two_ranks_fail_fast_with_rank_0s_error_when_it_cannot_decode(broken, tmp_path):
    cfg = compose_cfg(
        [
            *[o for o in TINY if not o.startswith("data.")],
            *FOLDER,
            f"data.root={broken}",
            "data.cache=disk",
            "data.on_bad_image=error",
            "dist.nproc_per_node=2",
            "dist.timeout_s=120",
        ]
    )
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 0 failed: .*cannot decode image .*9\.jpg"):
        train(cfg, tmp_path / "run")
    # nobody waits for the cache's own wait (days) nor the collective timeout, however loaded
    assert time.monotonic() - start < cfg.dist.timeout_s / 2
    # val decoded and was kept; of train nothing, not even a temporary file
    names = [p.name for p in (broken / ".densenet_exp_cache").iterdir()]
    assert sorted(n.split("-")[0] + n[n.rindex(".") :] for n in names) == ["val.json", "val.u8"]


def test_worker_processes_decode_the_rest_of_a_large_split_to_the_same_pixels(broken, monkeypatch):
    in_process = build_datasets(data_cfg(broken, "data.cache=ram", "data.num_workers=2"), seed=0)
    # as if the split were large: two images timed here, the rest in two worker processes
    monkeypatch.setattr(cache, "PROBE_IMAGES", 2)
    monkeypatch.setattr(cache, "WORKER_START_S", -1.0)
    workers = []

    def loader(*args, **kwargs):  # the real DataLoader, its worker count noted
        workers.append(kwargs["num_workers"])
        return DataLoader(*args, **kwargs)

    monkeypatch.setattr(cache, "DataLoader", loader)
    parallel = build_datasets(data_cfg(broken, "data.cache=ram", "data.num_workers=2"), seed=0)
    assert workers == [2, 2]  # val, then train
    same_split(in_process.train, parallel.train)
    same_split(in_process.val, parallel.val)
    assert len(parallel.train) == 15  # the truncated JPEG left out, decoded in a worker

    # one worker decodes no faster than this process: the split decodes here, however large
    workers.clear()
    build_datasets(data_cfg(broken, "data.cache=ram", "data.num_workers=1"), seed=0)
    assert workers == [0, 0]
