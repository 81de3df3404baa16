"""A slot's worker: ``python -m hydra_plugins.slots_launcher._child``, reading one job a line
(``PAYLOAD<TAB>RESULT``) from stdin until it closes.

The launcher starts it with the slot's environment (CUDA_VISIBLE_DEVICES, thread counts) and
affinity already in place, so they hold before anything in a job imports torch or CUDA; a slot's
settings never change, so its worker runs the slot's jobs one after another and pays Python's
and the job's imports once (4.5 s a job on the 2-core CPU when every job had a process of its
own). Each job runs as Hydra's own launchers run it (``setup_globals``, the sweep config of its
overrides, ``run_job``) and leaves its ``JobReturn`` in RESULT.
"""

from __future__ import annotations

import gc
import os
import sys

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import run_job, setup_globals
from omegaconf import open_dict

PLUGIN_PATH = "SLOTS_LAUNCHER_PLUGIN_PATH"


def see_parents_plugins() -> None:
    """The folders the sweep's process had in ``hydra_plugins.__path__`` (an app may add its own,
    as an editable install must): a job's pickled sweeper or callbacks may live in any of them."""
    import hydra_plugins

    for folder in filter(None, os.environ.get(PLUGIN_PATH, "").split(os.pathsep)):
        if folder not in list(hydra_plugins.__path__):
            hydra_plugins.__path__.append(folder)


def main(payload: str, result: str) -> None:
    with open(payload, "rb") as f:
        idx, overrides, hydra_context, config, task_function, singleton = cloudpickle.load(f)
    setup_globals()
    Singleton.set_state(singleton)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    try:
        data = cloudpickle.dumps(ret)
    except Exception:  # an exception or value that does not pickle: keep its text
        ret._return_value = RuntimeError(repr(ret._return_value))
        data = cloudpickle.dumps(ret)
    tmp = f"{result}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, result)


def serve() -> None:
    see_parents_plugins()
    for line in sys.stdin:
        payload, result = line.rstrip("\n").split("\t")
        main(payload, result)
        # what a job leaves behind is not the next job's: its objects, and GPU memory that
        # torch's allocator keeps cached
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    serve()
