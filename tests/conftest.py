"""Shared fixtures: composing the real config tree, tiny-run overrides, a hermetic digits copy."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import densenet_exp.__main__  # noqa: F401 - registers the config schema and resolvers
from densenet_exp.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# A tiny network on small random images: a training run takes about a second on 2 cores.
TINY = [
    "data=synthetic",
    "data.image_size=8",
    "data.batch_size=8",
    "data.synthetic_train_size=32",
    "data.synthetic_val_size=13",
    "data.synthetic_classes=3",
    "model.growth_rate=4",
    "model.block_config=[2,2]",
    "model.num_init_features=8",
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.device=cpu",
]


def assert_as_accurate(ours, theirs, exact, factor: float = 1.5) -> None:
    """Every gradient of ``ours`` at most ``factor`` times further from ``exact``'s than theirs.

    For low-precision runs, where ours and torchvision's round at different places (e.g. our
    transitions pool before their 1x1 conv) and differ from each other by the rounding itself.
    """
    for (name, a), b, e in zip(theirs.named_parameters(), ours.parameters(), exact.parameters()):
        ours_err = (b.grad.double() - e.grad.double()).norm()
        their_err = (a.grad.double() - e.grad.double()).norm()
        assert ours_err <= factor * their_err + 1e-4 * e.grad.double().norm(), (
            name,
            ours_err.item(),
            their_err.item(),
        )


def grad_error(model, exact) -> float:
    """Relative distance of all of ``model``'s gradients, as one vector, from ``exact``'s."""
    pairs = list(zip(model.parameters(), exact.parameters(), strict=True))
    diff = torch.cat([(a.grad.double() - e.grad.double()).flatten() for a, e in pairs])
    ref = torch.cat([e.grad.double().flatten() for _, e in pairs])
    return (diff.norm() / ref.norm()).item()


def compose_cfg(overrides: list[str] | None = None, hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides or [], return_hydra_config=hydra_config)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    from densenet_exp.data.digits import ensure_digits

    return ensure_digits(tmp_path_factory.mktemp("digits") / "digits")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """One 2x2 sweep through the CLI (act x seed: 4 tiny jobs), shared by the tests that only
    read it (the sweep's own folders and summary, summarize, the comparison). Copy it first to
    change it."""
    sweep = tmp_path_factory.mktemp("tiny_sweep") / "sweep"
    args = ["-m", *TINY, "act=relu,swish", "trainer.seed=range(2)", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(
        [PYTHON, "-m", "densenet_exp", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep
