"""Inference from a checkpoint: images, folders or lists of paths, with top-k classes.

    python -m densenet_exp.predict checkpoint=PATH input=PATH [topk=5] [output=FILE.csv|.json]
        [batch_size=64] [device=auto] [amp=O0..O3] [evaluate=true] [export=onnx|pt2|torchscript]

The network is rebuilt from the config saved in the checkpoint, images go through the checkpoint's
validation transform, and class names come from the checkpoint. Files that cannot be read are
reported per file and never stop the run; the exit code is 1 when any failed.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CheckpointError, load_checkpoint, model_weights
from .config import OptLevel, to_typed
from .data.decode import DECODE_ERRORS, load_image
from .data.imagefolder import log_ignored, visible_files
from .data.transforms import eval_transform
from .distributed import resolve_device
from .export import ExportKind, export_checked
from .models import build_model
from .precision import Precision

log = logging.getLogger("densenet_exp.predict")


@dataclass
class PredictConfig:
    checkpoint: str = "???"
    input: str = "???"
    topk: int = 5
    output: str | None = None
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    amp: Optional[OptLevel] = None  # null: the level the model was trained at
    evaluate: bool = False
    export: Optional[ExportKind] = None  # onnx, pt2 (torch.export) or torchscript
    export_path: str | None = None
    progress: bool = True


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The trained network (EMA weights when the run kept them) and the checkpoint's metadata."""
    state = load_checkpoint(checkpoint)
    for key in ("model", "config", "classes", "eval_transform"):
        if key not in state:
            raise CheckpointError(f"{checkpoint} is not a densenet_exp checkpoint (no '{key}')")
    cfg = to_typed(state["config"])  # the boundary: the checkpoint's plain dicts, typed
    cfg.model.pretrained = None  # the weights come from the checkpoint
    model = build_model(cfg, num_classes=len(state["classes"]))
    weights = model_weights(state)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    )
    return model.to(device).eval(), state


def gather_inputs(path: str | Path) -> list[Path]:
    """An image, a folder (recursed, sorted), or a text file of paths.

    A folder is read by the training scan's rules: hidden names and tool artefacts
    (``.ipynb_checkpoints``, ``__MACOSX``, ``._x.jpg``, ...) are left out and named once.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        ignored: list[str] = []
        files = visible_files(path, ignored)
        log_ignored(ignored, path)
        return files
    if not path.is_file():
        raise FileNotFoundError(f"input: no such file or folder: {path}")
    if path.suffix.lower() in (".txt", ".lst", ".list"):
        items = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line).expanduser()
                items.append(p if p.is_absolute() or p.exists() else path.parent / p)
        return items
    return [path]


class _Images(Dataset):
    def __init__(self, paths: Sequence[Path], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(load_image(str(self.paths[i]))), ""
        except (*DECODE_ERRORS, FileNotFoundError, IsADirectoryError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch: list[tuple[int, torch.Tensor | None, str]]) -> Any:
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    x = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], x, bad


@torch.no_grad()
def predict(
    model: nn.Module,
    paths: Sequence[Path],
    transform: Any,
    classes: Sequence[str],
    topk: int = 5,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: Precision | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per path: ``path``, ``topk`` [(class, prob)], ``probs`` (all classes), ``error``."""
    device = device or next(model.parameters()).device
    k = min(topk, len(classes))
    rows: list[dict[str, Any]] = [
        {"path": str(p), "topk": [], "probs": None, "error": ""} for p in paths
    ]
    loader = DataLoader(
        _Images(paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    if progress and sys.stderr.isatty() and len(paths) > batch_size:
        from tqdm import tqdm

        loader = tqdm(loader, desc="predict", unit="batch")
    for index, x, bad in loader:
        for i, err in bad:
            rows[i]["error"] = err
            log.warning("cannot read %s: %s", paths[i], err)
        if x is None:
            continue
        x = x.to(device)
        if precision is not None:
            x = precision.cast_input(x)
        with (
            precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)
        ):
            logits = model(x).float()
        probs = logits.softmax(1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for row_i, p, ti, pr in zip(index, top_p, top_i, probs):
            rows[row_i]["topk"] = [(classes[c], float(v)) for c, v in zip(ti.tolist(), p.tolist())]
            rows[row_i]["probs"] = pr
    return rows


def write_output(rows: list[dict[str, Any]], path: str | Path, topk: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        data = [
            {
                "path": r["path"],
                "error": r["error"] or None,
                "topk": [{"class": c, "prob": p} for c, p in r["topk"]],
            }
            for r in rows
        ]
        path.write_text(json.dumps(data, indent=2) + "\n")
        return
    if path.suffix.lower() != ".csv":
        raise ValueError(f"output must end in .csv or .json, got {path}")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["path", "error"]
        for j in range(1, topk + 1):
            header += [f"class_{j}", f"prob_{j}"]
        writer.writerow(header)
        for r in rows:
            cells: list[Any] = [r["path"], r["error"]]
            for j in range(topk):
                cells += list(r["topk"][j]) if j < len(r["topk"]) else ["", ""]
            writer.writerow(cells)


def evaluate_folder(
    rows: list[dict[str, Any]], root: Path, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy and confusion matrix of predictions on ``root/<class>/*`` (class = folder)."""
    index = {c: i for i, c in enumerate(classes)}
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    top1 = top5 = n = 0
    for r in rows:
        label = Path(r["path"]).relative_to(root).parts[0]
        if r["error"] or label not in index:
            continue
        predicted = [c for c, _ in r["topk"]]
        n += 1
        top1 += predicted[0] == label
        top5 += label in predicted[:5]
        confusion[index[label], index[predicted[0]]] += 1
    if n == 0:
        raise ValueError(f"evaluate=true: no image of a known class under {root}/<class>/")
    return {"images": n, "top1": top1 / n, "top5": top5 / n, "confusion": confusion}


def _table(rows: list[dict[str, Any]], width: int = 3) -> str:
    lines = []
    for r in rows:
        if r["error"]:
            lines.append(f"{r['path']}\tERROR {r['error']}")
        else:
            best = ", ".join(f"{c} {p:.3f}" for c, p in r["topk"][:width])
            lines.append(f"{r['path']}\t{best}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(PredictConfig), OmegaConf.from_dotlist(argv))
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except Exception as e:  # a typo'd key or a missing required one
        valid = ", ".join(PredictConfig.__dataclass_fields__)
        print(f"error: {e}\nvalid keys: {valid}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(cfg.device)
        model, state = load_model(cfg.checkpoint, device)
        paths = gather_inputs(cfg.input)
    except (CheckpointError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = state["classes"]
    transform = eval_transform(state["eval_transform"])
    amp_cfg = to_typed(state["config"]).amp
    if cfg.amp is not None:
        amp_cfg = replace(amp_cfg, opt_level=cfg.amp, keep_batchnorm_fp32=None, master_weights=None)
    precision = Precision(amp_cfg, device)
    precision.prepare(model, None)
    rows = predict(
        model,
        paths,
        transform,
        classes,
        cfg.topk,
        cfg.batch_size,
        cfg.num_workers,
        precision,
        device,
        cfg.progress,
    )
    print(_table(rows))
    failed = sum(1 for r in rows if r["error"])
    if cfg.output:
        write_output(rows, cfg.output, min(cfg.topk, len(classes)))
        print(f"wrote {cfg.output}")
    if cfg.evaluate:
        _print_evaluation(evaluate_folder(rows, Path(cfg.input).expanduser(), classes), classes)
    if cfg.export:
        code = export_checked(
            model, cfg.export, cfg.checkpoint, cfg.export_path, rows, transform, device
        )
        if code:
            return code
    if failed:
        print(f"{failed} of {len(rows)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _print_evaluation(result: dict[str, Any], classes: Sequence[str]) -> None:
    print(
        f"\nevaluated {result['images']} images: "
        f"top1 {result['top1']:.4f} top5 {result['top5']:.4f}"
    )
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(len(c) for c in classes)
    print(" " * (width + 1) + " ".join(f"{c:>{width}}" for c in classes))
    for c, counts in zip(classes, result["confusion"].tolist()):
        print(f"{c:>{width}} " + " ".join(f"{v:>{width}}" for v in counts))


if __name__ == "__main__":
    raise SystemExit(main())
