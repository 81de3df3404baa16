"""Deployable copies of a trained model, checked against the eager model they came from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.decode import load_image


def export_model(model: nn.Module, kind: str, path: Path, example: torch.Tensor) -> float:
    """Write a TorchScript or ONNX file and return its max abs difference to the eager model."""
    model = model.float().eval()
    example = example.float()
    with torch.no_grad():
        reference = model(example)
        if kind == "torchscript":
            traced = torch.jit.trace(model, example)
            traced.save(str(path))
            got = torch.jit.load(str(path))(example)
        elif kind == "onnx":
            try:
                import onnxruntime
            except ImportError as e:
                raise RuntimeError("export=onnx needs the onnx and onnxruntime packages") from e
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}},
            )
            session = onnxruntime.InferenceSession(str(path))
            got = torch.from_numpy(session.run(None, {"images": example.numpy()})[0])
        else:
            raise ValueError(f"unknown export {kind!r}; valid choices: torchscript, onnx")
    return float((got - reference).abs().max())


def export_checked(
    model: nn.Module,
    kind: str,
    checkpoint: str,
    export_path: str | None,
    rows: list[dict[str, Any]],
    transform: Any,
    device: torch.device,
) -> int:
    """Export to ``export_path`` (default: next to the checkpoint), compared on up to four of the
    images that were read; the exit code: 0, 1 if the copy differs, 2 if no image was readable."""
    good = [Path(r["path"]) for r in rows if not r["error"]][:4]
    if not good:
        print("error: export needs at least one readable input image", file=sys.stderr)
        return 2
    example = torch.stack([transform(load_image(str(p))) for p in good]).to(device)
    suffix = {"torchscript": ".pt", "onnx": ".onnx"}.get(kind, "")
    out = Path(export_path or Path(checkpoint).with_suffix(f".{kind}{suffix}"))
    diff = export_model(model, kind, out, example)
    print(f"exported {kind} to {out}; max |exported - eager| on {len(good)} images: {diff:.2e}")
    if diff > 1e-3:
        print("error: the exported model does not match the eager model", file=sys.stderr)
        return 1
    return 0
