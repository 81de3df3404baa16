"""The launcher's settings (``hydra.launcher.*``), registered as ``hydra/launcher=slots``."""

# (no ``from __future__ import annotations``: Hydra runs plugin modules before registering them in
# sys.modules, and dataclasses then cannot resolve string annotations)
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SlotsLauncherConf:
    _target_: str = "hydra_plugins.slots_launcher.slots_launcher.SlotsLauncher"
    # whole GPUs each job gets (CUDA_VISIBLE_DEVICES); ignored on a machine without GPUs
    gpus_per_job: int = 1
    # jobs sharing one GPU (packing small jobs); needs gpus_per_job=1
    jobs_per_gpu: int = 1
    # the GPUs to use (ids as CUDA_VISIBLE_DEVICES takes them); null: every GPU the machine has
    devices: Optional[list[Any]] = None
    # cores each job gets (affinity + OMP_NUM_THREADS); null: the cores shared out over the GPU
    # slots on a GPU machine, 1 a job on a CPU machine
    cores_per_job: Optional[int] = None
    # at most this many jobs at once (null: as many as there are slots)
    max_parallel: Optional[int] = None
    # one worker process a slot, running its jobs in turn (imports paid once); false: a fresh
    # process for every job
    reuse_workers: bool = True
    # a live line (done / running / failed / queued, elapsed, time left) on a terminal
    progress: bool = True


ConfigStore.instance().store(
    group="hydra/launcher", name="slots", node=SlotsLauncherConf, provider="slots_launcher"
)
