"""Command-line overrides as the tools read them: one parser, one list of the keys set apart.

The entry point names sweep jobs by their overrides, ``closing`` builds the resume command from
them, and ``runs`` groups runs into configurations: all three read overrides with these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What Hydra's basic sweeper writes into the sweep folder before any job starts: the sweep's
# config, composed without the swept values, with the command line's raw overrides.
SWEEP_RECORD = "multirun.yaml"

# Keys that never name a sweep job's folder: the seed goes last as ``seed=N`` when it is swept;
# presets and resume say nothing about what a job trains.
NOT_IN_JOB_NAMES = ("trainer.seed", "trainer.resume", "experiment", "hparams_search")

# Keys that say how a run was carried out, not what it trains: runs that differ only in these
# (and the seed) are replicas of one configuration.
NOT_CONFIGURATION = (
    "trainer.seed",
    "trainer.resume",
    "trainer.progress",
    "trainer.log_every_n_steps",
    "trainer.ckpt_every_n_steps",
    "trainer.device",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "dist.rdzv_endpoint",
    "dist.rdzv_id",
    "dist.backend",
    "dist.timeout_s",
    "logger",  # the whole node: where the run was logged to
)


_NOT_CONFIGURATION_NODES = tuple(f"{k}." for k in NOT_CONFIGURATION)


def is_configuration_key(key: str) -> bool:
    """Whether a key (``model.growth_rate``, ``logger.mlflow.enabled``) says what a run trains:
    not one of ``NOT_CONFIGURATION`` nor inside one of them."""
    return key not in NOT_CONFIGURATION and not key.startswith(_NOT_CONFIGURATION_NODES)


def override_key(override: str) -> str:
    """``+model.x=1`` -> ``model.x``: the key an override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str:
    """``model.x=1`` -> ``1``: the value as typed ("" for a deletion such as ``~model.x``)."""
    return override.split("=", 1)[1] if "=" in override else ""


def replace_keys(saved: list[str], new: list[str]) -> list[str]:
    """``saved`` with every key that ``new`` sets replaced by ``new``'s (appended last)."""
    new_keys = {override_key(o) for o in new}
    return [o for o in saved if override_key(o) not in new_keys] + list(new)


def sweep_record(sweep_dir: str | Path | None) -> dict[str, Any] | None:
    """``<sweep>/multirun.yaml`` as plain YAML (nothing resolved), or None where there is none."""
    if not sweep_dir:
        return None
    path = Path(sweep_dir) / SWEEP_RECORD
    if not path.is_file():
        return None
    import yaml

    return yaml.safe_load(path.read_text()) or {}
