"""Rank 0's MLflow run: opened (or continued) before training, fed each logged step and
evaluation by the run's record, and ended with the summary, the files and the status."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import Config, MlflowLogger, to_plain
from ..metrics import HISTORY_FILE, SUMMARY_FILE, EpochRow, Status
from ..overrides import is_configuration_key, override_key
from ..val_predictions import BEST_FILE, FINAL_FILE
from .store import (
    RUN_FILE,
    STATUS,
    Store,
    best_effort,
    experiment_name,
    git_commit,
    key_name,
    limits,
    now_ms,
    read_record,
    tracking_uri,
    within,
    write_record,
)

log = logging.getLogger("densenet_exp")

# what an evaluation logs, with step = its epoch (from 0, as metrics.jsonl); global_step maps
# each epoch to its optimizer step. Throughput and memory are the summary's (one value a run, the
# name a column of MLflow's run table): a metric is one series, logged under one meaning only.
EVAL_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "lr")
# the run's files, uploaded when it ends (the config under config/)
ARTIFACTS = (SUMMARY_FILE, HISTORY_FILE, "train.log", FINAL_FILE, BEST_FILE)
CHECKPOINTS = ("last.pt", "best.pt")  # with logger.mlflow.log_checkpoints=true


def config_params(cfg: Config) -> dict[str, str]:
    """The composed config, flattened (``model.growth_rate``) to strings within MLflow's limit.

    Values are JSON (``null``, ``[3, 3, 3]``, ``true``) except strings, which are as written;
    an empty node (``conv.params: {}``) is a param of its own so every key of the config shows.
    """
    limit = limits()[0]
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[key_name(prefix[:-1])] = within(node, limit)

    walk(to_plain(cfg), "")
    return out


def run_tags(
    cfg: Config, run_dir: Path, hydra_cfg: dict[str, Any], overrides: list[str] | None
) -> dict[str, str]:
    """What a run is: its group choices, configuration label, seed, folder and commit, from
    its config and what Hydra recorded of it (``_hydra_record``)."""
    tags = {"seed": str(cfg.trainer.seed), "run_dir": str(run_dir)}
    tags["mlflow.source.name"] = "densenet_exp"
    choices = (hydra_cfg.get("runtime") or {}).get("choices") or {}
    for group, choice in choices.items():
        # how it was logged, and Hydra's own plugins, are no choice of what it trains
        if choice is not None and group != "logger" and not group.startswith("hydra/"):
            tags[f"choice.{group}"] = str(choice)
    if overrides is not None:  # what Hydra recorded: not there for train(cfg, run_dir)
        own = sorted(o for o in overrides if is_configuration_key(override_key(o)))
        tags["configuration"] = ",".join(own) or "defaults"
        tags["overrides"] = " ".join(overrides)
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    limit = limits()[1]
    return {k: within(v, limit) for k, v in tags.items()}


def _hydra_record(run_dir: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The run's ``.hydra/hydra.yaml`` (its ``hydra`` node; {} without) and its overrides (None
    without). Read here, not through ``runs``, which would import scipy and matplotlib into
    every tracked run's start."""
    import yaml

    def load(name: str) -> Any:
        try:
            return yaml.safe_load((run_dir / ".hydra" / name).read_text())
        except (OSError, yaml.YAMLError):
            return None

    overrides = load("overrides.yaml")
    hydra_cfg = (load("hydra.yaml") or {}).get("hydra") or {}
    return hydra_cfg, [str(o) for o in overrides] if isinstance(overrides, list) else None


def _hydra_job(run_dir: Path, hydra_cfg: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(the sweep folder, the job number) when Hydra ran this folder as a sweep's job."""
    if str(hydra_cfg.get("mode")).split(".")[-1] != "MULTIRUN":
        return None, None
    # the folder the job is in, not hydra.sweep.dir: ``runs extend`` sweeps from a folder of its
    # own into the sweep's
    return run_dir.parent, str((hydra_cfg.get("job") or {}).get("num", ""))


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowRun:
    """Rank 0's MLflow run. Made by ``open_run``; every method is a no-op once the store failed."""

    def __init__(self, store: Store, run_id: str, run_dir: Path, settings: MlflowLogger) -> None:
        self.store, self.run_id, self.run_dir, self.settings = store, run_id, run_dir, settings
        self.logged_epochs: set[int] = set()  # evaluations already in the store (a resumed run)
        self.last_step = -1  # the last train-loss step in the store

    def _log(self, what: str, **batch: Any) -> None:
        self.store.call(what, self.store.client.log_batch, self.run_id, **batch)

    @best_effort
    def step(self, step: int, loss: float) -> None:
        """The train loss at an optimizer step (every ``trainer.log_every_n_steps``)."""
        if step <= self.last_step:  # replayed after a resume: in the store already
            return
        from mlflow.entities import Metric

        self._log("train loss", metrics=[Metric("train_loss_step", loss, now_ms(), step)])

    @best_effort
    def evaluation(self, row: EpochRow) -> None:
        """One point per metric at step = the evaluation's epoch, once however often resumed."""
        if row.epoch in self.logged_epochs:
            return
        from mlflow.entities import Metric

        now = now_ms()
        metrics = [Metric(k, float(getattr(row, k)), now, row.epoch) for k in EVAL_METRICS]
        metrics.append(Metric("global_step", float(row.step), now, row.epoch))
        self._log("evaluation", metrics=metrics)
        if self.store:
            self.logged_epochs.add(row.epoch)

    @best_effort
    def end(self, record: dict[str, Any]) -> None:
        """The summary as metrics, the run's files as artifacts, and its status; then the store
        lets go of the run (a resume reopens it)."""
        from mlflow.entities import Metric, RunTag

        if not self.store:  # failed mid-run: one more try, the store may be back
            self.store.failed = ""
            log.info("MLflow store %s: trying again to record the run's end", self.store.uri)
        self._fill_in()
        status = str(record.get("status", Status.failed.value))
        now = now_ms()
        numbers = {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        tags = [RunTag("status", status)]
        if record.get("error"):
            tags.append(RunTag("error", within(str(record["error"]), limits()[1])))
        metrics = [Metric(k, v, now, 0) for k, v in numbers.items()]
        self._log("summary", metrics=metrics, tags=tags)
        self._artifacts()
        self.store.call(
            "status", self.store.client.set_terminated, self.run_id, STATUS.get(status, "FAILED")
        )

    def _fill_in(self) -> None:
        """Every evaluation of metrics.jsonl the store lacks: those of an outage of the store,
        and those before this MLflow run began (a run resumed into a new MLflow run, the old one
        deleted or in another store), so its record of the run is whole (but for the train-loss
        points it missed)."""
        path = self.run_dir / HISTORY_FILE
        for line in path.read_text().splitlines() if path.is_file() else []:
            self.evaluation(EpochRow(**json.loads(line)))

    def _artifacts(self) -> None:
        client = self.store.client
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.store.call(name, client.log_artifact, self.run_id, str(self.run_dir / name))
        hydra_dir = self.run_dir / ".hydra"
        if hydra_dir.is_dir():
            self.store.call("config", client.log_artifacts, self.run_id, str(hydra_dir), "config")
        if self.settings.log_checkpoints:
            for name in CHECKPOINTS:  # not last.prev.pt, the fallback kept while writing
                path = str(self.run_dir / "checkpoints" / name)
                if Path(path).is_file():
                    self.store.call(name, client.log_artifact, self.run_id, path, "checkpoints")


@best_effort
def open_run(cfg: Config, run_dir: Path) -> MlflowRun | None:
    """Start (or, resuming, continue) the run's MLflow run; None when MLflow is off or failed.

    Rank 0 only. A resumed run (``trainer.resume`` set) whose folder names its MLflow run
    continues it: status RUNNING again, and evaluations and train-loss steps already in the
    store are not logged twice. Params are logged once, by the first attempt.
    """
    settings = cfg.logger.mlflow
    if not settings.enabled:
        return None
    hydra_cfg, overrides = _hydra_record(run_dir)
    sweep_dir, job = _hydra_job(run_dir, hydra_cfg)
    parent = read_record(sweep_dir / RUN_FILE) if sweep_dir is not None else None
    uri = tracking_uri(settings, parent.get("tracking_uri") if parent else None)
    store = Store(uri)
    if not store:
        return None
    saved = read_record(run_dir / RUN_FILE)
    if cfg.trainer.resume and saved and saved.get("tracking_uri") == uri:
        run = _continue(store, saved["run_id"], run_dir, settings)
        if run is not None:
            return run
    if parent and parent.get("tracking_uri") == uri and not settings.experiment_name:
        experiment_id: str | None = parent["experiment_id"]
    else:
        experiment_id = store.experiment(experiment_name(settings, sweep_dir))
    if experiment_id is None:
        return None
    tags = store.call("tags", run_tags, cfg, run_dir, hydra_cfg, overrides) or {}
    if sweep_dir is not None:
        tags |= {"sweep": str(sweep_dir), "job": job or ""}
        if parent and parent.get("experiment_id") == experiment_id:
            tags["mlflow.parentRunId"] = parent["run_id"]
    created = store.call(
        "create run", store.client.create_run, experiment_id, tags=tags, run_name=run_dir.name
    )
    if created is None:
        return None
    run = MlflowRun(store, created.info.run_id, run_dir, settings)
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in config_params(cfg).items()]
    for batch in _batches(params, limits()[2]):
        run._log("params", params=batch)
    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.run_id}
    store.call(RUN_FILE, write_record, run_dir / RUN_FILE, record)
    log.info("MLflow: run %s in experiment %s of %s", run.run_id, experiment_id, uri)
    return run


def _continue(store: Store, run_id: str, run_dir: Path, settings: MlflowLogger) -> MlflowRun | None:
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        found = client.get_run(run_id)
    except MlflowException:  # not in this store (another database): a new run
        return None
    if found.info.lifecycle_stage == "deleted":  # deleted in the UI: a new run, not a revival
        return None
    run = MlflowRun(store, run_id, run_dir, settings)
    history = store.call("history", client.get_metric_history, run_id, "val_top1") or []
    run.logged_epochs = {m.step for m in history}
    steps = store.call("history", client.get_metric_history, run_id, "train_loss_step") or []
    run.last_step = max((m.step for m in steps), default=-1)
    store.call("status", client.update_run, run_id, status="RUNNING")
    log.info("MLflow: continuing run %s (%d evaluations logged)", run_id, len(run.logged_epochs))
    return run
