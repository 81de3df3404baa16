"""A sweep in MLflow: its driver opens the experiment and a parent run before any job starts
(which also makes the database once, before jobs running side by side could race to), and the
sweep's summary, comparison and effects go to that run when the sweep, or ``runs extend``, ends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MlflowLogger
from .store import (
    RUN_FILE,
    Store,
    best_effort,
    experiment_name,
    git_commit,
    key_name,
    now_ms,
    read_record,
    tracking_uri,
    write_record,
)

if TYPE_CHECKING:
    from ..runs.effects import Effects
    from ..runs.records import Run


@best_effort
def open_sweep(settings: MlflowLogger, sweep_dir: Path, overrides: list[str]) -> None:
    """Before any job starts: the sweep's experiment and parent run, in ``<sweep>/mlflow.json``
    (kept when the same sweep is run again to finish it)."""
    if not settings.enabled:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    saved = read_record(sweep_dir / RUN_FILE)
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
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    created = store.call(
        "create run", store.client.create_run, experiment_id, tags=tags, run_name=sweep_dir.name
    )
    if created is not None:
        run_id = created.info.run_id
        write_record(
            sweep_dir / RUN_FILE,
            {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id},
        )


@best_effort
def log_sweep(
    sweep_dir: Path,
    runs: list[Run],
    rows: list[dict[str, Any]],
    effects: Effects | None,
    failed: int,
) -> None:
    """When a sweep (or ``runs extend``) ends: its summary and comparison (``rows``, of its
    ``runs`` as the caller read them) and its effects on the parent run, as files and as a tag
    and metrics per configuration and per effect, and each job's verdict on the job."""
    parent = read_record(sweep_dir / RUN_FILE)
    if parent is None:
        return
    store = Store(parent["tracking_uri"])
    if not store:
        return
    from mlflow.entities import Metric, RunTag

    client, run_id, now = store.client, parent["run_id"], now_ms()
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
    for effect in effects.family if effects is not None else []:
        key = key_name(effect.name)
        tags.append(RunTag(f"effect.{key}", effect.verdict))
        for name in ("estimate", "low", "high", "adjusted_p"):
            value = getattr(effect, name)
            if value == value:  # not NaN
                metrics.append(Metric(f"effect_{name}.{key}", float(value), now, 0))
    store.call("comparison", client.log_batch, run_id, metrics=metrics, tags=tags)
    files = [sweep_dir.glob(f"{stem}*") for stem in ("summary", "compare", "effects")]
    for name in [f for group in files for f in sorted(group)]:
        store.call(name.name, client.log_artifact, run_id, str(name))
    _tag_jobs(store, runs, verdicts)
    store.call("status", client.set_terminated, run_id, "FAILED" if failed else "FINISHED")


def _tag_jobs(store: Store, runs: list[Run], verdicts: dict[str, str]) -> None:
    """Each job's MLflow run gets its configuration's verdict (``baseline`` for the baseline)."""
    from ..runs.configs import configurations  # here: runs/ imports this module for extend

    for config in configurations(runs):
        verdict = verdicts.get(config.label)
        if not verdict:
            continue
        for run in config.runs:
            saved = read_record(run.path / RUN_FILE)
            if saved and saved.get("tracking_uri") == store.uri:
                store.call("verdict", store.client.set_tag, saved["run_id"], "verdict", verdict)
