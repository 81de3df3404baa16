"""Decode once, augment whole batches on the device: same eval tensors, per-image randomness,
exact resume and rank-count independence."""

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from densenet_exp import train
from densenet_exp.config import to_typed
from densenet_exp.data import build_datasets, build_loaders
from densenet_exp.data.augment import (
    ATTEMPTS,
    BatchAugment,
    affine_params,
    normalize_batch,
    resized_crop_params,
    uniforms,
)
from densenet_exp.data.cache import DecodedSplit

FOLDER = ["data=imagefolder", "data.image_size=16", "data.batch_size=4", "data.num_workers=0"]


@pytest.fixture
def photos(tmp_path):
    """Photos of mixed sizes, aspect ratios and modes (RGB JPEG, grey PNG, RGBA PNG)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog", "owl")):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate([(40, 30), (23, 51), (64, 64), (17, 19)]):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c] //= 2
                image = Image.fromarray(pixels)
                if i == 1:
                    image.convert("L").save(folder / f"{i}.png")
                elif i == 2:
                    image.convert("RGBA").save(folder / f"{i}.png")
                else:
                    image.save(folder / f"{i}.jpg", quality=90)
    return tmp_path


def data_cfg(root, *extra):
    return to_typed(compose_cfg([*FOLDER, f"data.root={root}", *extra])).data


@pytest.mark.parametrize("augment", ["light", "imagenet"])
def test_cached_and_uncached_evaluation_see_the_same_tensors(photos, augment):
    extra = [f"data.augment={augment}", "data.eval_crop_ratio=0.875"]
    folder = build_datasets(data_cfg(photos, "data.cache=none", *extra))
    cached = build_datasets(data_cfg(photos, "data.cache=ram", *extra))
    assert isinstance(cached.val, DecodedSplit) and not isinstance(folder.val, DecodedSplit)
    assert len(cached.val) == len(folder.val) == 12
    for i in range(len(folder.val)):
        expected, target = folder.val[i]
        x, y, index, _ = cached.val.__getitems__([i])
        got = cached.eval_on_device(x)[0]
        assert torch.equal(got, expected), i  # bit for bit, not just close
        assert int(y) == target and int(index) == i
    assert [p for p, _ in cached.val.samples] == [p for p, _ in folder.val.samples]


def test_the_loaders_hand_out_whole_cached_batches_with_their_indices(photos):
    d = data_cfg(photos, "data.cache=ram")
    bundle = build_datasets(d, seed=3)
    train_loader, val_loader, _ = build_loaders(bundle, d, 0, 1, 3, torch.device("cpu"))
    x, y, index, sizes = next(iter(train_loader))
    # augment=imagenet (imagefolder's default) keeps the whole image: 16 / 0.875 = 18 px square
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 18, 18)
    assert torch.equal(bundle.train.targets[index], y)
    # with the originals' (h, w), which the crops are drawn in
    originals = [Image.open(bundle.train.samples[i][0]).size[::-1] for i in index.tolist()]
    assert sizes.tolist() == [list(hw) for hw in originals]
    out = bundle.train_on_device(x, index, 0, sizes)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 16, 16)
    assert sum(len(b[1]) for b in val_loader) == 12


def test_device_augmentation_is_per_image_and_a_function_of_seed_epoch_and_index():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8)
    batch = image.expand(4, -1, -1, -1).contiguous()  # one image, four times
    sizes = torch.tensor([[30, 40]] * 4)  # the originals' (h, w)
    for augment in ("light", "imagenet"):
        aug = BatchAugment(augment, 16, [0.5] * 3, [0.5] * 3, seed=7)
        out = aug(batch, torch.tensor([3, 8, 5, 9]), 2, sizes)
        assert out.shape == (4, 3, 16, 16)
        assert not torch.equal(out[0], out[1])  # two images of one batch: different crops
        # the same image index gives the same result in any batch, at any position
        again = aug(batch[:2], torch.tensor([9, 3]), 2, sizes[:2])
        assert torch.equal(again[0], out[3]) and torch.equal(again[1], out[0])
        assert not torch.equal(aug(batch[:1], torch.tensor([3]), 3, sizes[:1])[0], out[0])
        other_seed = BatchAugment(augment, 16, [0.5] * 3, [0.5] * 3, seed=8)
        assert not torch.equal(other_seed(batch[:1], torch.tensor([3]), 2, sizes[:1])[0], out[0])


def test_the_counter_hash_gives_independent_uniform_draws():
    u = uniforms(seed=1, epoch=0, index=torch.arange(20000), n=2)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u[:, 0].numpy(), "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03  # neighbouring indices


def test_light_is_the_identity_at_the_middle_of_its_ranges():
    x = torch.rand(2, 3, 16, 16)
    theta = affine_params(torch.full((2, 4), 0.5, dtype=torch.float64), 16)
    grid = torch.nn.functional.affine_grid(theta.float(), [2, 3, 16, 16], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)
    assert torch.equal(out, x)


def test_light_draws_what_torchvision_random_affine_draws():
    n = 4000
    theta = affine_params(uniforms(0, 0, torch.arange(n), 4), 20)
    ours_scale = 1 / torch.sqrt(torch.linalg.det(theta[:, :, :2])).numpy()
    ours_angle = torch.rad2deg(torch.atan2(theta[:, 0, 1], theta[:, 0, 0])).numpy()
    ours_shift = (theta[:, :, :2].inverse() @ -theta[:, :, 2:])[:, 0, 0].numpy() * 20 / 2
    torch.manual_seed(0)
    params = ((-10, 10), (0.1, 0.1), (0.9, 1.1), None, [20, 20])
    draws = [v2.RandomAffine.get_params(*params) for _ in range(n)]
    tv = np.array([(a, t[0], s) for a, t, s, _ in draws])
    assert stats.ks_2samp(ours_scale, tv[:, 2]).pvalue > 1e-3
    assert stats.ks_2samp(np.abs(ours_angle), np.abs(tv[:, 0])).pvalue > 1e-3
    # whole-pixel shifts of at most 2 (0.1 x 20), each value about as often as torchvision's
    assert set(np.round(np.abs(ours_shift)).astype(int)) <= {0, 1, 2}
    for v in (0, 1, 2):
        ours_share = np.mean(np.round(np.abs(ours_shift)) == v)
        assert ours_share == pytest.approx(np.mean(np.abs(tv[:, 1]) == v), abs=0.04)


@pytest.mark.parametrize("h, w", [(200, 300), (300, 80)])  # the second mostly falls back
def test_imagenet_crops_follow_torchvision_random_resized_crop(h, w):
    n = 4000
    theta = resized_crop_params(
        uniforms(5, 1, torch.arange(n), 4 * ATTEMPTS + 1), torch.tensor([[h, w]] * n)
    )
    sx, sy = theta[:, 0, 0].abs().numpy(), theta[:, 1, 1].numpy()
    ours_area, ours_ratio = sx * sy, (sx * w) / (sy * h)
    torch.manual_seed(0)
    image = torch.empty(1, h, w)
    draws = [v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    tv = np.array(draws)
    tv_area, tv_ratio = tv[:, 2] * tv[:, 3] / (h * w), tv[:, 3] / tv[:, 2]
    assert stats.ks_2samp(ours_area, tv_area).pvalue > 1e-3
    assert stats.ks_2samp(ours_ratio, tv_ratio).pvalue > 1e-3
    # every box inside the image, flipped half the time
    left = (theta[:, 0, 2].numpy() + 1) / 2 * w - sx * w / 2
    assert left.min() >= -1e-6 and (left + sx * w).max() <= w + 1e-6
    assert np.mean(theta[:, 0, 0].numpy() < 0) == pytest.approx(0.5, abs=0.03)
    assert ours_area.max() <= 1.0 + 1e-9


def test_evaluation_from_the_cache_needs_only_the_last_two_steps():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = v2.Normalize([0.2] * 3, [0.3] * 3)(v2.ToDtype(torch.float32, scale=True)(x))
    assert torch.equal(normalize_batch(x, [0.2] * 3, [0.3] * 3), expected)


DIGITS = [
    *[o for o in TINY if not o.startswith("data.")],
    "data=digits",
    "data.image_size=8",
    "data.num_workers=0",
    "data.cache=ram",
    "trainer.deterministic=true",
]


def test_one_rank_of_16_and_two_of_8_train_the_same_from_the_cache(tmp_path, digits_root):
    # the one rank caches in RAM; the two ranks map the disk cache their rank 0 decodes
    common = [*DIGITS, f"data.root={digits_root}", "sync_bn=true", "trainer.max_steps=6"]
    one = train(compose_cfg([*common, "data.batch_size=16"]), tmp_path / "one")
    on_disk = ["data.cache=disk", f"data.cache_dir={tmp_path / 'decoded'}"]
    two = train(
        compose_cfg([*common, *on_disk, "data.batch_size=8", "dist.nproc_per_node=2"]),
        tmp_path / "two",
    )
    assert one["steps"] == two["steps"] == 6 and two["world_size"] == 2
    written = sorted(p.suffix for p in (tmp_path / "decoded").iterdir())
    assert written == [".json", ".json", ".u8", ".u8"]  # two splits, no temporaries
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
