"""Atomic checkpoint writes, safe loads, and the RNG state that makes a resume exact."""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, or not loadable as plain tensors."""


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write via a temp file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact; a reader never sees half a checkpoint.
    ``keep_previous`` first moves the old file to ``<name>.prev.pt``, a fallback for resume.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``: plain tensors and containers, nothing that runs code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: {first} (truncated, corrupt, or not a plain-tensor "
            "checkpoint; loading uses weights_only=True and refuses pickled code)"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights in a checkpoint: the EMA copy when the run kept one, else the model.

    ``AveragedModel`` stores the averaged network under ``module.`` (and its step counter beside
    it); this is the one place that knows that layout.
    """
    ema = state.get("ema")
    if ema:
        prefix = "module."
        return {k[len(prefix) :]: v for k, v in ema.items() if k.startswith(prefix)}
    return state["model"]


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as plain Python lists and ints.

    Plain containers load under ``weights_only=True`` and travel through ``gather_object``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_resume_state(
    resume: str | None, run_dir: Path, map_location: str | Any = "cpu"
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from, loaded.

    ``null``: none. ``auto``: this run's ``last.pt``, falling back to ``last.prev.pt`` then
    ``best.pt`` when it is missing or corrupt (a fresh start when there is none at all). A path (a
    file, or a run directory) must load, or the error names it.
    """
    if not resume:
        return None, None
    if resume == "auto":
        folder = run_dir / "checkpoints"
        for path in (folder / "last.pt", folder / "last.prev.pt", folder / "best.pt"):
            if not path.is_file():
                continue
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as e:
                log.warning("trainer.resume=auto: skipping %s", e)
        return None, None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"trainer.resume: no checkpoint at {path}")
    return path, load_checkpoint(path, map_location)
