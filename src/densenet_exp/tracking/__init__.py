"""MLflow tracking (``logger=mlflow``): each run an MLflow run, each sweep an experiment with a
parent run.

Rank 0 of a run logs its config as params, its group choices and configuration as tags, a point
per evaluation, the summary and its files at the end, and a status that matches ``metrics.json``
(completed: FINISHED, failed: FAILED with the error, interrupted: KILLED). The run's MLflow id is
kept in ``<run>/mlflow.json``, so a resumed or requeued run continues the same MLflow run.

    store.py  where the store is, and a client whose failures warn once and never end a run
    run.py    rank 0's run: ``open_run`` (the engine's rank calls it), ``MlflowRun``
    sweep.py  ``open_sweep`` and ``log_sweep`` (the sweep callback and ``runs extend``)

MLflow is an optional extra (``pip install -e ".[mlflow]"``), imported only when it is on.
"""

from .run import MlflowRun, config_params, open_run, run_tags
from .store import RUN_FILE, MlflowMissing, Store, check_settings, key_name, tracking_uri
from .sweep import log_sweep, open_sweep

__all__ = [
    "RUN_FILE",
    "MlflowMissing",
    "MlflowRun",
    "Store",
    "check_settings",
    "config_params",
    "key_name",
    "log_sweep",
    "open_run",
    "open_sweep",
    "run_tags",
    "tracking_uri",
]
