"""Uncached splits sent to the device as uint8 batches: decoded in the loader (decode=cpu,
augment_on=device) or as JPEG bytes for the device to decode (decode=gpu; its decoder is run on
the CPU here, where torchvision's decode_jpeg is libjpeg like PIL)."""

import logging

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from PIL import Image
from torch.utils.data import DataLoader

from densenet_exp import train
from densenet_exp.config import ConfigError, to_typed
from densenet_exp.data import DataError, build_datasets, build_loaders, check_decode
from densenet_exp.data.decode import load_image
from densenet_exp.data.streamed import DeviceDecodedLoader, DeviceDecoder, StreamedSplit

FOLDER = ["data=imagefolder", "data.image_size=16", "data.batch_size=4", "data.num_workers=0"]
CPU = torch.device("cpu")


@pytest.fixture
def photos(tmp_path):
    """Per class: an RGB JPEG, a greyscale JPEG, a CMYK JPEG (PIL decodes it: nvJPEG would not
    give PIL's colours), a 4:2:0 JPEG and an RGBA PNG, of mixed sizes."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (23, 51), (64, 64), (37, 29), (17, 19)]
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog", "owl")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c] //= 2
                image = Image.fromarray(pixels)
                if i == 1:
                    image.convert("L").save(folder / f"{i}.jpg", quality=90)
                elif i == 2:
                    image.convert("CMYK").save(folder / f"{i}.jpg", quality=90)
                elif i == 3:
                    image.save(folder / f"{i}.jpg", quality=75, subsampling=2)
                elif i == 4:
                    image.convert("RGBA").save(folder / f"{i}.png")
                else:
                    image.save(folder / f"{i}.jpg", quality=95, subsampling=0)
    return tmp_path


def data_cfg(root, *extra):
    return to_typed(compose_cfg([*FOLDER, f"data.root={root}", *extra])).data


def batches(bundle, d):
    train_loader, val_loader, _ = build_loaders(bundle, d, 0, 1, 3, CPU)
    return list(train_loader), list(val_loader)


def gpu_loader(split: StreamedSplit, batch_size: int = 4) -> DeviceDecodedLoader:
    """data.decode=gpu's loader of an encoded split, decoding on the CPU."""
    loader = DataLoader(split, batch_size=batch_size, collate_fn=split.collate)
    return DeviceDecodedLoader(loader, DeviceDecoder(split, CPU))


def decoded_on_cpu(split: StreamedSplit, batch_size: int = 4) -> list:
    return list(gpu_loader(split, batch_size))


def test_streamed_train_batches_are_the_cached_ones(photos):
    d_stream = data_cfg(photos, "data.cache=none", "data.augment_on=device")
    d_cache = data_cfg(photos, "data.cache=ram")
    streamed, cached = build_datasets(d_stream, seed=3), build_datasets(d_cache, seed=3)
    assert isinstance(streamed.train, StreamedSplit) and not streamed.train.encoded
    (s_train, _), (c_train, _) = batches(streamed, d_stream), batches(cached, d_cache)
    assert len(s_train) == len(c_train) == 3
    for s, c in zip(s_train, c_train, strict=True):
        assert s[0].dtype == torch.uint8 and s[0].shape == (4, 3, 18, 18)  # the whole layout
        for a, b in zip(s, c, strict=True):
            assert torch.equal(a, b)
        x, _, index, sizes = s
        assert torch.equal(
            streamed.train_on_device(x, index, 1, sizes), cached.train_on_device(x, index, 1, sizes)
        )


@pytest.mark.parametrize("augment", ["light", "imagenet"])
def test_the_gpu_decode_path_gives_the_folder_path_tensors(photos, augment):
    extra = [f"data.augment={augment}", "data.eval_crop_ratio=0.875", "data.cache=none"]
    folder = build_datasets(data_cfg(photos, *extra))
    gpu = build_datasets(data_cfg(photos, *extra, "data.decode=gpu"), seed=3)
    assert gpu.val.encoded and gpu.train.encoded
    # JPEGs in RGB or grey travel as bytes; the CMYK JPEG and the PNG are decoded by the worker
    kinds = {gpu.val.samples[i][0].rsplit("/", 1)[1]: gpu.val[i][0].dim() for i in range(5)}
    assert kinds == {"0.jpg": 1, "1.jpg": 1, "2.jpg": 3, "3.jpg": 1, "4.png": 3}
    seen = 0
    for x, y, index, _ in decoded_on_cpu(gpu.val):
        out = gpu.eval_on_device(x)
        for row, i in enumerate(index.tolist()):
            expected, target = folder.val[i]
            assert torch.equal(out[row], expected), gpu.val.samples[i][0]  # bit for bit
            assert int(y[row]) == target
            seen += 1
    assert seen == len(folder.val) == 15
    # the train split decodes to what the loader-decoded stream gives
    stream = build_datasets(data_cfg(photos, *extra, "data.augment_on=device"), seed=3)
    loader = DataLoader(stream.train, batch_size=4, collate_fn=stream.train.collate)
    for got, expected in zip(decoded_on_cpu(gpu.train), loader, strict=True):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)


def test_a_corrupt_jpeg_is_skipped_once_or_raises_by_on_bad_image(photos, caplog):
    bad = photos / "val" / "dog" / "0.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header survives: only decoding finds it
    split = build_datasets(data_cfg(photos, "data.cache=none", "data.decode=gpu")).val
    loader = gpu_loader(split, 5)
    with caplog.at_level(logging.WARNING, logger="densenet_exp"):
        got = [i for epoch in range(2) for b in loader for i in b[2].tolist()]
    bad_index = [p for p, _ in split.samples].index(str(bad))
    assert sorted(got) == sorted([i for i in range(15) if i != bad_index] * 2)
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1  # once, not per epoch
    strict = build_datasets(
        data_cfg(photos, "data.cache=none", "data.decode=gpu", "data.on_bad_image=error")
    ).val
    with pytest.raises(DataError, match=r"cannot decode image .*dog/0\.jpg.*on_bad_image=error"):
        decoded_on_cpu(strict, 5)


def test_decode_gpu_needs_device_augmentation_and_a_gpu(photos, tmp_path):
    with pytest.raises(ConfigError, match=r"augment_on=loader.*valid choices: auto, device"):
        check_decode(data_cfg(photos, "data.decode=gpu", "data.augment_on=loader"))
    with pytest.raises(ConfigError, match=r"augment_on=loader.*valid choices: auto, device"):
        train(compose_cfg([*TINY, "data.decode=gpu", "data.augment_on=loader"]), tmp_path / "r")
    d = data_cfg(photos, "data.decode=gpu", "data.cache=none")
    check_decode(d)  # fine until the device is known
    with pytest.raises(ConfigError, match=r"trains on cpu; valid choices here: cpu"):
        build_loaders(build_datasets(d), d, 0, 1, 0, CPU)
    # a run fails before it reads any data
    with pytest.raises(ConfigError, match=r"data\.decode=gpu .* trains on cpu"):
        train(compose_cfg([*TINY, "data.decode=gpu"]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_streamed_run_trains_exactly_like_a_cached_one(photos, tmp_path):
    # (and caching does not move the global RNG the model is initialised from)
    common = [
        *[o for o in TINY if not o.startswith("data.")],
        *FOLDER,
        f"data.root={photos}",
        "trainer.deterministic=true",
        "trainer.max_steps=3",
    ]
    runs = {}
    for name, extra in {
        "cached": ["data.cache=ram"],
        "streamed": ["data.cache=none", "data.augment_on=device"],
    }.items():
        summary = train(compose_cfg([*common, *extra]), tmp_path / name)
        last = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
        runs[name] = summary, last["model"]
    (a, wa), (b, wb) = runs["cached"], runs["streamed"]
    assert a["steps"] == b["steps"] == 3 and a["best_val_top1"] == b["best_val_top1"]
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_phone_photo_with_an_exif_rotation_is_upright_in_every_path(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)  # stored landscape, 40 x 20
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
            # PNG: lossless, so the pixels can be compared exactly
            Image.fromarray(raw).save(tmp_path / split / cls / "0.png", exif=exif)
            Image.fromarray(raw).save(
                tmp_path / split / cls / "1.jpg", exif=exif, quality=95, subsampling=0
            )
    upright = np.rot90(raw, k=-1)  # clockwise: 20 wide, 40 high
    png = load_image(str(tmp_path / "train" / "a" / "0.png"))
    assert png.size == (20, 40) and np.array_equal(np.asarray(png), upright)
    with Image.open(tmp_path / "train" / "a" / "1.jpg") as stored:  # what a viewer is handed
        sideways = np.asarray(stored.convert("RGB"))
    jpg = np.asarray(load_image(str(tmp_path / "train" / "a" / "1.jpg")))
    assert np.array_equal(jpg, np.rot90(sideways, k=-1))

    # decode=gpu's readers send the rotated JPEG decoded, not as bytes nvJPEG would not rotate
    split = build_datasets(data_cfg(tmp_path, "data.cache=none", "data.decode=gpu")).val
    rotated = [s[0] for s in split.samples].index(str(tmp_path / "val" / "a" / "1.jpg"))
    payload, _, _, size = split[rotated]
    assert payload.dim() == 3 and tuple(size) == (40, 20)
