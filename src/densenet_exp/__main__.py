"""``python -m densenet_exp [overrides]``: compose, train every rank, return the objective."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from . import train
from .config import config_dir

_RESOLVERS_REGISTERED = False


def _register_resolvers() -> None:
    global _RESOLVERS_REGISTERED
    if _RESOLVERS_REGISTERED:
        return
    # job directory names from overrides: keep them one path component and readable
    OmegaConf.register_new_resolver(
        "densenet_exp.dirname",
        lambda s: str(s).replace("/", "_").replace("\\\\", "_")[:120] or "defaults",
        replace=True,
    )
    _RESOLVERS_REGISTERED = True


_register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train; return best val top-1 so sweepers (Optuna) can maximise it."""
    summary = train(cfg)
    best = (summary or {}).get("best_val_top1")
    return float(best) if best is not None else float("nan")


if __name__ == "__main__":
    main()
