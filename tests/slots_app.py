"""A Hydra app for the slots launcher's tests: each job records where it ran (its devices,
cores, thread count, pid and times) and then sleeps, fails or kills itself as told. No torch, so
a job starts in well under a second."""

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from densenet_exp.plugins import find_own_plugins


@dataclass
class App:
    sleep: float = 0.0
    fail: bool = False
    kill: bool = False
    value: float = 0.0  # returned as the objective


ConfigStore.instance().store(name="app", node=App)
find_own_plugins()


@hydra.main(version_base="1.3", config_path=None, config_name="app")
def main(cfg: App) -> float:
    out = Path(HydraConfig.get().runtime.output_dir)
    record = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_order": os.environ.get("CUDA_DEVICE_ORDER"),
        "cores": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
        "start": time.time(),
    }
    (out / "started.json").write_text(json.dumps(record))
    time.sleep(cfg.sleep)
    if cfg.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.fail:
        raise RuntimeError("told to fail")
    record["end"] = time.time()
    (out / "where.json").write_text(json.dumps(record))
    return cfg.value


if __name__ == "__main__":
    main()
