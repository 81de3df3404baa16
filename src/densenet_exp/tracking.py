"""MLflow tracking: each run an MLflow run, each sweep an experiment with a parent run.

Rank 0 of a run logs its config as params, its group choices and configuration as tags, a point
per evaluation, the summary and its files at the end, and a status that matches ``metrics.json``
(completed: FINISHED, failed: FAILED with the error, interrupted: KILLED). The run's MLflow id is
kept in ``<run>/mlflow.json``, so a resumed or requeued run continues the same MLflow run. A
sweep's driver opens a parent run before any job starts (``<sweep>/mlflow.json``; it also makes
the database once, before jobs running side by side could race to) and logs the sweep's summary
and comparison to it when the sweep ends.

Tracking never costs a run: a store that cannot be opened or written warns once, naming the
store and the reason, and training goes on; the run folder holds everything either way.
MLflow is an optional extra (``pip install -e ".[mlflow]"``), imported only when it is on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .config import Config, MlflowLogger, to_plain
from .metrics import HISTORY_FILE, SUMMARY_FILE, EpochRow, Status
from .overrides import is_configuration_key, override_key
from .val_predictions import BEST_FILE, FINAL_FILE

log = logging.getLogger("densenet_exp")
T = TypeVar("T")

RUN_FILE = "mlflow.json"  # a run folder's MLflow run; in a sweep folder, the sweep's parent run
DEFAULT_DB = Path("outputs") / "mlflow.db"
DEFAULT_EXPERIMENT = "densenet_exp"
STATUS = {
    Status.completed.value: "FINISHED",
    Status.failed.value: "FAILED",
    Status.interrupted.value: "KILLED",
}
# what an evaluation logs, with step = its epoch (from 0, as metrics.jsonl); global_step maps
# each epoch to its optimizer step. Throughput and memory are the summary's (one value a run, the
# name a column of MLflow's run table): a metric is one series, logged under one meaning only.
EVAL_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "lr")
# the run's files, uploaded when it ends (the config under config/)
ARTIFACTS = (SUMMARY_FILE, HISTORY_FILE, "train.log", FINAL_FILE, BEST_FILE)
CHECKPOINTS = ("last.pt", "best.pt")  # with logger.mlflow.log_checkpoints=true
# MLflow's HTTP client retries a server that does not answer for minutes by default: a run
# should find out in seconds and go on (a user's own setting wins)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def best_effort(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Tracking never ends a run: whatever goes wrong in ``fn`` is a warning, and None."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> T | None:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            log.warning(
                "MLflow: %s failed (%s: %s); training goes on, the run folder has everything",
                fn.__name__.strip("_"),
                type(e).__name__,
                e,
            )
            return None

    return guarded


class MlflowMissing(ImportError):
    """``logger=mlflow`` without the package: said before any work starts."""


def check_settings(settings: MlflowLogger) -> None:
    """Fail before any work on MLflow settings that cannot do what they ask."""
    if not settings.enabled:
        if settings.tracking_uri or settings.experiment_name or settings.log_checkpoints:
            raise ValueError(
                "logger.mlflow is set but MLflow is off: add logger=mlflow "
                "(or logger=[tensorboard,mlflow] to keep TensorBoard too)"
            )
        return
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise MlflowMissing(
            f"logger=mlflow needs MLflow ({e}): pip install -e '.[mlflow]' "
            "(mlflow-skinny with the SQLite store), or pick logger=tensorboard / logger=none"
        ) from None


def tracking_uri(settings: MlflowLogger, inherited: str | None = None) -> str:
    """The store: the setting, else the sweep's (``inherited``), else SQLite in ``outputs/``.

    A SQLite file's folder is made here: SQLite makes the file, not the folders.
    """
    uri = settings.tracking_uri or inherited or f"sqlite:///{DEFAULT_DB.resolve()}"
    db = _sqlite_file(uri)
    if db is not None:
        # where it cannot be made, the store fails to open, which warns and names it
        with contextlib.suppress(OSError):
            db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")) if uri != "sqlite:///:memory:" else None


def experiment_name(settings: MlflowLogger, sweep_dir: Path | None) -> str:
    """The user's name, else the sweep's folder (relative to here when below it), else ours."""
    if settings.experiment_name:
        return settings.experiment_name
    if sweep_dir is None:
        return DEFAULT_EXPERIMENT
    sweep = sweep_dir.resolve()
    try:
        return str(sweep.relative_to(Path.cwd()))
    except ValueError:
        return str(sweep)


class Store:
    """An ``MlflowClient`` whose first failure warns, naming the store and why, and turns it
    off: every later call is skipped, and the run goes on."""

    def __init__(self, uri: str) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.uri, self.failed = uri, ""
        self.client: Any = self.call("open", _client, uri)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            self.failed = f"{type(e).__name__}: {reason}"
            log.warning(
                "MLflow store %s: %s failed (%s); training goes on without MLflow, the run "
                "folder has everything",
                self.uri,
                what,
                self.failed,
            )
            return None

    def __bool__(self) -> bool:
        return not self.failed

    def experiment(self, name: str) -> str | None:
        """The experiment's id, made if new (beside a SQLite store, its artifacts too)."""
        return self.call(f"experiment {name!r}", _experiment, self.client, name, self.uri)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    # a failing SQLite store logs each error with its whole traceback; our warning says it once
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # opens (and makes) the store now, not mid-run
    return client


def _experiment(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    # MLflow puts a SQLite store's artifacts in ./mlruns of wherever the process started: keep
    # them beside the database instead, one folder an experiment
    db = _sqlite_file(uri)
    location = None
    if db is not None:
        tag = hashlib.sha1(name.encode()).hexdigest()[:8]
        folder = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[-80:]}-{tag}"
        location = (db.resolve().parent / "mlartifacts" / folder).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job made it a moment ago
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# -- params and tags ------------------------------------------------------------------------------
def _limits() -> tuple[int, int, int]:
    """MLflow's own limits on param values, tag values and entries per batch."""
    from mlflow.utils import validation

    return (
        validation.MAX_PARAM_VAL_LENGTH,
        validation.MAX_TAG_VAL_LENGTH,
        validation.MAX_PARAMS_TAGS_PER_BATCH,
    )


def key_name(key: str) -> str:
    """A config key or label as MLflow takes it: letters, digits and ``_-. /:``, nothing else
    (``conv=dsconv,act=swish`` -> ``conv_dsconv_act_swish``)."""
    return re.sub(r"[^\w\-. /:]+", "_", key)[:250] or "_"


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_params(cfg: Config) -> dict[str, str]:
    """The composed config, flattened (``model.growth_rate``) to strings within MLflow's limit.

    Values are JSON (``null``, ``[3, 3, 3]``, ``true``) except strings, which are as written;
    an empty node (``conv.params: {}``) is a param of its own so every key of the config shows.
    """
    limit = _limits()[0]
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[key_name(prefix[:-1])] = _text(node, limit)

    walk(to_plain(cfg), "")
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def run_tags(cfg: Config, run_dir: Path) -> dict[str, str]:
    """What a run is: its group choices, configuration label, seed, folder and commit."""
    tags = {"seed": str(cfg.trainer.seed), "run_dir": str(run_dir)}
    tags["mlflow.source.name"] = "densenet_exp"
    hydra_cfg, overrides = _hydra_record(run_dir)
    choices = (hydra_cfg.get("runtime") or {}).get("choices") or {}
    for group, choice in choices.items():
        # how it was logged, and Hydra's own plugins, are no choice of what it trains
        if choice is not None and group != "logger" and not group.startswith("hydra/"):
            tags[f"choice.{group}"] = str(choice)
    if overrides is not None:  # what Hydra recorded: not there for train(cfg, run_dir)
        own = sorted(o for o in overrides if is_configuration_key(override_key(o)))
        tags["configuration"] = ",".join(own) or "defaults"
        tags["overrides"] = " ".join(overrides)
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    limit = _limits()[1]
    return {k: _text(v, limit) for k, v in tags.items()}


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


def _hydra_job(run_dir: Path) -> tuple[Path | None, str | None]:
    """(the sweep folder, the job number) when Hydra ran this folder as a sweep's job."""
    hydra_cfg, _ = _hydra_record(run_dir)
    if str(hydra_cfg.get("mode")).split(".")[-1] != "MULTIRUN":
        return None, None
    # the folder the job is in, not hydra.sweep.dir: ``runs extend`` sweeps from a folder of its
    # own into the sweep's
    return run_dir.parent, str((hydra_cfg.get("job") or {}).get("num", ""))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- one run --------------------------------------------------------------------------------------
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

        self._log("train loss", metrics=[Metric("train_loss_step", loss, _now(), step)])

    @best_effort
    def evaluation(self, row: EpochRow) -> None:
        """One point per metric at step = the evaluation's epoch, once however often resumed."""
        if row.epoch in self.logged_epochs:
            return
        from mlflow.entities import Metric

        now = _now()
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

        if not self.store:
            self._catch_up()
        status = str(record.get("status", Status.failed.value))
        now = _now()
        numbers = {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        tags = [RunTag("status", status)]
        if record.get("error"):
            tags.append(RunTag("error", _text(str(record["error"]), _limits()[1])))
        metrics = [Metric(k, v, now, 0) for k, v in numbers.items()]
        self._log("summary", metrics=metrics, tags=tags)
        self._artifacts()
        self.store.call(
            "status", self.store.client.set_terminated, self.run_id, STATUS.get(status, "FAILED")
        )

    def _catch_up(self) -> None:
        """A store that failed mid-run gets one more try at the end: if it is back, the
        evaluations it missed are logged from metrics.jsonl, so its record of the run is whole
        (but for the train-loss points of the outage)."""
        self.store.failed = ""
        log.info("MLflow store %s: trying again to record the end of the run", self.store.uri)
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


def _now() -> int:
    return int(time.time() * 1000)


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
    sweep_dir, job = _hydra_job(run_dir)
    parent = _read(sweep_dir / RUN_FILE) if sweep_dir is not None else None
    uri = tracking_uri(settings, parent.get("tracking_uri") if parent else None)
    store = Store(uri)
    if not store:
        return None
    saved = _read(run_dir / RUN_FILE)
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
    tags = store.call("tags", run_tags, cfg, run_dir) or {}
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
    for batch in _batches(params, _limits()[2]):
        run._log("params", params=batch)
    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.run_id}
    store.call(RUN_FILE, _write, run_dir / RUN_FILE, record)
    log.info("MLflow: run %s in experiment %s of %s", run.run_id, experiment_id, uri)
    return run


def _continue(store: Store, run_id: str, run_dir: Path, settings: MlflowLogger) -> MlflowRun | None:
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        client.get_run(run_id)
    except MlflowException:  # not in this store (deleted, or another database): a new run
        return None
    run = MlflowRun(store, run_id, run_dir, settings)
    history = store.call("history", client.get_metric_history, run_id, "val_top1") or []
    run.logged_epochs = {m.step for m in history}
    steps = store.call("history", client.get_metric_history, run_id, "train_loss_step") or []
    run.last_step = max((m.step for m in steps), default=-1)
    store.call("status", client.update_run, run_id, status="RUNNING")
    log.info("MLflow: continuing run %s (%d evaluations logged)", run_id, len(run.logged_epochs))
    return run


# -- a sweep --------------------------------------------------------------------------------------
@best_effort
def open_sweep(settings: MlflowLogger, sweep_dir: Path, overrides: list[str]) -> None:
    """Before any job starts: the sweep's experiment and parent run, in ``<sweep>/mlflow.json``
    (kept when the same sweep is run again to finish it)."""
    if not settings.enabled:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    saved = _read(sweep_dir / RUN_FILE)
    store = Store(uri)
    if not store:
        return
    if saved and saved.get("tracking_uri") == uri:
        store.call("status", store.client.update_run, saved["run_id"], status="RUNNING")
        return
    experiment_id = store.experiment(experiment_name(settings, sweep_dir))
    if experiment_id is None:
        return
    tags = {"sweep": str(sweep_dir.resolve()), "overrides": " ".join(overrides), "kind": "sweep"}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    created = store.call(
        "create run", store.client.create_run, experiment_id, tags=tags, run_name=sweep_dir.name
    )
    if created is not None:
        run_id = created.info.run_id
        _write(
            sweep_dir / RUN_FILE,
            {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id},
        )


@best_effort
def log_sweep(sweep_dir: Path, rows: list[dict[str, Any]], failed: int) -> None:
    """When a sweep (or ``runs extend``) ends: its summary and comparison on the parent run, as
    files and as a tag and metrics per configuration, and each job's verdict on the job."""
    parent = _read(sweep_dir / RUN_FILE)
    if parent is None:
        return
    store = Store(parent["tracking_uri"])
    if not store:
        return
    from mlflow.entities import Metric, RunTag

    client, run_id, now = store.client, parent["run_id"], _now()
    tags, metrics = [RunTag("failed_jobs", str(failed))], []
    verdicts = {row["baseline"]: "baseline" for row in rows[:1]}
    for row in rows:
        key = key_name(row["configuration"])
        verdicts[row["configuration"]] = row["verdict"] or ""
        tags.append(RunTag(f"verdict.{key}", row["verdict"] or ""))
        for name in ("delta_top1", "ci_low", "ci_high", "p_holm"):
            value = row.get(name)
            if isinstance(value, (int, float)) and value == value:  # not NaN
                metrics.append(Metric(f"{name}.{key}", float(value), now, 0))
    store.call("comparison", client.log_batch, run_id, metrics=metrics, tags=tags)
    for name in sorted(sweep_dir.glob("summary*")) + sorted(sweep_dir.glob("compare*")):
        store.call(name.name, client.log_artifact, run_id, str(name))
    _tag_jobs(store, sweep_dir, verdicts)
    store.call("status", client.set_terminated, run_id, "FAILED" if failed else "FINISHED")


def _tag_jobs(store: Store, sweep_dir: Path, verdicts: dict[str, str]) -> None:
    """Each job's MLflow run gets its configuration's verdict (``baseline`` for the baseline)."""
    from .runs import find_runs
    from .runs.configs import configurations

    for config in configurations(find_runs(sweep_dir)):
        verdict = verdicts.get(config.label)
        if not verdict:
            continue
        for run in config.runs:
            saved = _read(run.path / RUN_FILE)
            if saved and saved.get("tracking_uri") == store.uri:
                store.call("verdict", store.client.set_tag, saved["run_id"], "verdict", verdict)
