"""Deployable copies of a trained model, checked against the eager model they came from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config.choices import Choice
from .data.decode import load_image


class ExportKind(Choice):
    onnx = "onnx"  # torch's exporter (torch.export underneath), run by onnxruntime
    pt2 = "pt2"  # torch.export's program
    torchscript = "torchscript"  # deprecated by torch, kept while torch has it


# beside the checkpoint: last.pt -> last.onnx, last.pt2, last.torchscript.pt
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}


def _batch_dim() -> dict[str, Any]:
    # the batch is the one dimension a caller may change; image size stays the trained one
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError("export=onnx needs the onnx, onnxscript and onnxruntime packages") from e
    # torch's current exporter (torch.export underneath, dynamo=True); the TorchScript-based one
    # that dynamo=False keeps is deprecated
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_batch_dim(),
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.cpu().numpy()})[0])


def _pt2(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim())
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    # torch.jit.trace warns that it is deprecated (torch.export is its successor): kept while
    # torch has it, for the C++ runtimes that load TorchScript
    torch.jit.trace(model, example).save(str(path))
    return torch.jit.load(str(path))


def export_model(model: nn.Module, kind: str, path: Path, example: torch.Tensor) -> float:
    """Write an ONNX, torch.export (``.pt2``) or TorchScript file and return its max abs
    difference to the eager model, on ``example`` and on its first image alone (the batch size
    stays free in onnx and pt2)."""
    writers = {"onnx": _onnx, "pt2": _pt2, "torchscript": _torchscript}
    if kind not in writers:
        raise ValueError(f"unknown export {kind!r}; valid choices: {ExportKind.valid()}")
    model = model.float().eval()
    example = example.float()
    if len(example) < 2:  # a batch of one would fix the batch size at 1 in torch.export
        example = example.expand(2, *example.shape[1:]).contiguous()
    with torch.no_grad():
        run = writers[kind](model, example, path)
        diff = 0.0
        for batch in (example, example[:1]):
            diff = max(diff, float((run(batch).cpu() - model(batch).cpu()).abs().max()))
    return diff


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
    out = Path(export_path or Path(checkpoint).with_suffix(SUFFIX[kind]))
    diff = export_model(model, kind, out, example)
    print(f"exported {kind} to {out}; max |exported - eager| on {len(good)} images: {diff:.2e}")
    if diff > 1e-3:
        print("error: the exported model does not match the eager model", file=sys.stderr)
        return 1
    return 0
