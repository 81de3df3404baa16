"""The MLflow store as a run sees it: where it is, and a client whose failures never end a run.

``Store`` wraps ``MlflowClient``: its first failure warns once, naming the store and the reason,
and turns it off (the run goes on; ``MlflowRun.end`` gives it one more try). ``best_effort``
does the same for whole calls. Run and sweep records (``mlflow.json``) are read and written here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config import MlflowLogger
from ..metrics import Status

log = logging.getLogger("densenet_exp")
T = TypeVar("T")

RUN_FILE = "mlflow.json"  # a run folder's MLflow run; in a sweep folder, the sweep's parent run
DEFAULT_DB = Path("outputs") / "mlflow.db"  # below the folder the command starts in
DEFAULT_EXPERIMENT = "densenet_exp"  # a run of no sweep
STATUS = {  # how metrics.json says a run ended -> MLflow's word
    Status.completed.value: "FINISHED",
    Status.failed.value: "FAILED",
    Status.interrupted.value: "KILLED",
}

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
        given = {"tracking_uri": settings.tracking_uri, "experiment_name": settings.experiment_name}
        given["log_checkpoints"] = settings.log_checkpoints or None
        named = [f"logger.mlflow.{k}={v!r}" for k, v in given.items() if v is not None]
        if named:
            raise ValueError(
                f"{', '.join(named)} set but MLflow is off: add logger=mlflow "
                "(or logger=[tensorboard,mlflow] to keep TensorBoard too)"
            )
        return
    # found, not imported: a launching parent need not pay for MLflow's import
    if importlib.util.find_spec("mlflow") is None:
        raise MlflowMissing(
            "logger=mlflow needs MLflow, which is not installed: pip install -e '.[mlflow]' "
            "(mlflow-skinny with the SQLite store), or pick logger=tensorboard / logger=none"
        )


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


def limits() -> tuple[int, int, int]:
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


def within(value: Any, limit: int) -> str:
    """A value as MLflow stores it (strings as written, the rest as JSON), cut to ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def git_commit() -> str | None:
    """The commit checked out where the command started, if that is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def read_record(path: Path) -> dict[str, Any] | None:
    """An ``mlflow.json`` (store, experiment and run id), or None where there is none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomically: a resume must never read half a record."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def now_ms() -> int:
    return int(time.time() * 1000)
