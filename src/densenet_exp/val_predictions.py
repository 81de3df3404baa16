"""Per-image validation predictions: what the engine writes and the run tools read, defined once.

Every evaluation of a run writes ``val_predictions.csv`` (so at the end it holds the final
evaluation's) and, when the evaluation is the best so far, ``val_predictions.best.csv``. One row
per validation image, in the validation set's order, the same on 1 rank or N:

    index    position in the validation set (sorted file paths)
    image    the file's path relative to the data root (``val/cat/0001.jpg``), or ``#<index>``
    true     true class name
    pred     predicted class name (the top-1)
    correct  1 if pred == true, else 0
    p_true   softmax probability of the true class (6 decimals)
    p_pred   softmax probability of the predicted class
    top2..top5  the next classes by probability (empty where there are fewer classes)

Runs trained on the same validation images can then be compared image by image
(``runs compare`` pairs them by ``image``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the run tools read these files without torch (a second of import)
    import torch

FINAL_FILE = "val_predictions.csv"
BEST_FILE = "val_predictions.best.csv"
TOPK = 5
COLUMNS = ["index", "image", "true", "pred", "correct", "p_true", "p_pred"] + [
    f"top{k}" for k in range(2, TOPK + 1)
]


def image_names(dataset: Any) -> list[str]:
    """How each validation item is named in the file: its path under the data root, or its index."""
    root = getattr(dataset, "root", None)
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [f"#{i}" for i in range(len(dataset))]
    if root is None:
        return [str(path) for path, _ in samples]
    return [os.path.relpath(path, root) for path, _ in samples]


@dataclass
class PredictionSink:
    """Collects one rank's per-image results during an evaluation; rank 0 gathers them all."""

    index: list[torch.Tensor] = field(default_factory=list)
    target: list[torch.Tensor] = field(default_factory=list)
    top_i: list[torch.Tensor] = field(default_factory=list)
    top_p: list[torch.Tensor] = field(default_factory=list)
    p_true: list[torch.Tensor] = field(default_factory=list)

    def add(self, index: torch.Tensor, target: torch.Tensor, logits: torch.Tensor) -> None:
        """One batch: its items' indices, true classes and fp32 logits."""
        probs = logits.softmax(dim=1)
        top = logits.topk(min(TOPK, logits.shape[1]), dim=1).indices  # the metrics' own ranking
        self.index.append(index.cpu())
        self.target.append(target.cpu())
        self.top_i.append(top.cpu())
        self.top_p.append(probs.gather(1, top).cpu())
        self.p_true.append(probs.gather(1, target[:, None]).squeeze(1).cpu())

    def local(self) -> dict[str, torch.Tensor]:
        import torch

        if not self.index:
            return {}
        return {
            name: torch.cat(getattr(self, name))
            for name in ("index", "target", "top_i", "top_p", "p_true")
        }

    def gather(self) -> dict[str, torch.Tensor] | None:
        """Every rank's rows on rank 0, sorted by index (None on the other ranks)."""
        import torch
        import torch.distributed as dist

        mine = self.local()
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            parts = [mine]
        else:
            parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(mine, parts, dst=0)
            if dist.get_rank() != 0:
                return None
        parts = [p for p in parts if p]
        if not parts:
            return {}
        merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        order = merged["index"].argsort()
        return {k: v[order] for k, v in merged.items()}


def write(path: Path, rows: dict[str, torch.Tensor], names: list[str], classes: list[str]) -> None:
    """Write gathered rows as the CSV described above, atomically (temp file + rename)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for n in range(len(rows.get("index", []))):
            index = int(rows["index"][n])
            true = int(rows["target"][n])
            top = rows["top_i"][n].tolist()
            probs = rows["top_p"][n].tolist()
            rest = [classes[c] for c in top[1:]] + [""] * (TOPK - len(top))
            writer.writerow(
                [
                    index,
                    names[index],
                    classes[true],
                    classes[top[0]],
                    int(top[0] == true),
                    f"{float(rows['p_true'][n]):.6f}",
                    f"{probs[0]:.6f}",
                    *rest,
                ]
            )
    tmp.replace(path)


def read(path: str | Path) -> list[dict[str, str]]:
    """The rows of a predictions file, as strings keyed by ``COLUMNS``."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
