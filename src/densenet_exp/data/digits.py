"""The embedded default data set: scikit-learn's handwritten digits, as an ImageFolder tree.

``sklearn.datasets.load_digits`` ships inside the scikit-learn wheel (1,797 8x8 images of 10
classes, from the UCI optical-digits set), so the default run needs no download. It is written
once as PNG files and then read through exactly the same path as a user's own folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_ROOT = Path("~/.cache/densenet_exp/digits")
_MARKER = ".complete"


def ensure_digits(root: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write ``root/{train,val}/<digit>/<n>.png`` if not there yet; return ``root``.

    The tree is built in a temporary sibling and renamed into place, so concurrent ranks or jobs
    never see half a data set.
    """
    root = Path(root or DEFAULT_ROOT).expanduser()
    if (root / _MARKER).is_file():
        return root
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        index, test_size=val_fraction, random_state=seed, stratify=digits.target
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        for split, ids in (("train", train_idx), ("val", val_idx)):
            for i in sorted(ids):
                folder = tmp / split / str(digits.target[i])
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
        (tmp / _MARKER).write_text(f"{len(train_idx)} train, {len(val_idx)} val\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / _MARKER).is_file():  # lost the race to a broken tree: replace it
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
