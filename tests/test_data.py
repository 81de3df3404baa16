import logging

import numpy as np
import pytest
import torch
from conftest import compose_cfg
from PIL import Image

from densenet_exp import train
from densenet_exp.data import DataError, build_datasets, load_image
from densenet_exp.data.imagefolder import build_imagefolder_splits

MODES = ["L", "P", "RGBA", "CMYK", "I;16", "RGB", "LA"]


def make_image(path, mode, seed):
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (20, 24), dtype=np.uint16))
        img.save(path.with_suffix(".png"))
        return
    img = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    img.save(path.with_suffix(".jpg" if mode == "CMYK" else ".png"))


def messy_folder(root, classes=("cat", "dog"), per_class=7, split=True):
    for split_name in ["train", "val"] if split else [""]:
        for c, cls in enumerate(classes):
            folder = root / split_name / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                make_image(folder / f"img{i}", MODES[i % len(MODES)], seed=100 * c + i)
    return root


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_becomes_8bit_rgb(tmp_path, mode):
    make_image(tmp_path / "x", mode, 0)
    (path,) = list(tmp_path.iterdir())
    img = load_image(str(path))
    assert img.mode == "RGB" and img.size == (24, 20)
    if mode == "I;16":  # rescaled to 0..255, not clipped to white
        assert 0 < np.asarray(img).mean() < 250


def test_a_messy_folder_trains_with_the_corrupt_files_skipped_and_named(tmp_path, caplog):
    root = messy_folder(tmp_path / "data")
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really an image")
    good = Image.new("RGB", (32, 32), (10, 200, 30))
    good.save(root / "train" / "dog" / "truncated.png")
    data = (root / "train" / "dog" / "truncated.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    cfg = compose_cfg(
        [
            "data=imagefolder",
            f"data.root={root}",
            "data.image_size=16",
            "data.batch_size=4",
            "data.num_workers=0",
            "model.growth_rate=4",
            "model.block_config=[2,2]",
            "model.num_init_features=8",
            "model.stem=cifar",
            "trainer.epochs=1",
            "trainer.progress=false",
            "trainer.device=cpu",
        ]
    )
    with caplog.at_level(logging.WARNING):
        summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    text = caplog.text
    assert "broken.png" in text and "truncated.png" in text
    assert "notes.txt" not in text  # non-image files are ignored silently


def test_folder_without_val_is_split_by_class_with_a_fixed_seed(tmp_path):
    root = messy_folder(tmp_path / "flat", per_class=10, split=False)
    a_train, a_val, classes = build_imagefolder_splits(root, val_split=0.3, split_seed=3)
    _, b_val, _ = build_imagefolder_splits(root, val_split=0.3, split_seed=3)
    assert classes == ["cat", "dog"]
    assert a_val == b_val and len(a_val) == 6 and len(a_train) == 14
    assert {c for _, c in a_val} == {0, 1}
    assert not {p for p, _ in a_val} & {p for p, _ in a_train}


def test_digits_is_written_once_as_an_imagefolder_and_read_like_user_data(digits_root):
    cfg = compose_cfg([f"data.root={digits_root}", "data.cache=none"])  # the per-image path
    bundle = build_datasets(cfg.data)
    assert bundle.classes == [str(i) for i in range(10)]
    assert len(bundle.train) + len(bundle.val) == 1797
    assert len(bundle.val) == 360
    x, y = bundle.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    assert (digits_root / "train" / "3").is_dir() and (digits_root / ".complete").is_file()


def test_train_augmentation_depends_only_on_seed_epoch_and_index(digits_root):
    # the per-image loader path (data.cache=none); the batched one: test_input_pipeline.py
    cfg = compose_cfg([f"data.root={digits_root}", "data.cache=none"])
    a = build_datasets(cfg.data, seed=5).train
    b = build_datasets(cfg.data, seed=5).train
    torch.manual_seed(123)
    first = a[7][0]
    torch.rand(100)  # unrelated use of the global RNG changes nothing
    assert torch.equal(first, b[7][0])
    a.set_epoch(1)
    assert not torch.equal(first, a[7][0])


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("empty_root", "no class folders"),
        ("empty_class", "class folder(s) with no images"),
        ("class_mismatch", "train and val class folders differ"),
        ("single_class", "single class"),
        ("all_bad", "no readable images"),
    ],
)
def test_bad_data_layouts_fail_before_training_with_a_message_naming_the_problem(
    tmp_path, layout, message
):
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "empty_class":
        messy_folder(root, split=False)
        (root / "bird").mkdir()
    elif layout == "class_mismatch":
        messy_folder(root)
        (root / "val" / "dog").rename(root / "val" / "wolf")
    elif layout == "single_class":
        messy_folder(root, classes=("cat",), split=False)
    elif layout == "all_bad":
        for cls in ("a", "b"):
            (root / cls).mkdir()
            for i in range(3):
                (root / cls / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_imagefolder_splits(root)


def test_on_bad_image_error_names_the_file(tmp_path):
    root = messy_folder(tmp_path / "d", split=False)
    (root / "cat" / "zz.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"zz\.png"):
        build_imagefolder_splits(root, on_bad_image="error")
