"""``runs extend``: more seeds, only where the answer is still open, at planned looks.

The first call writes the plan (``plan.Plan``: the family it spends on, seeds per look doubling up
to ``--max-seeds``, the minimum effect, the baseline, the test); each look then trains the next
seeds of every configuration it adds to as one multirun (``hydra/sweeper=jobs``) through the
sweep's own launcher (the ``hydra/launcher`` and its settings recorded in ``multirun.yaml``: side
by side under the slots or joblib launcher) into the sweep's own folder, under the names the
sweep gives its jobs, with seeds no run of the sweep has used. ``--by configurations`` (the
default) trains the baseline and every configuration still undecided against it; ``--by effects``
trains every cell of the grid equally, so that each contrast's information grows as n_k / n_K and
the spending carries over unchanged, until every main effect and interaction is decided.
``compare`` (or ``effects``) reads the plan and tests look j on the first n_j seeds at the level
the plan spends there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..overrides import override_key, sweep_record
from ..runs.compare import Options, compare, default_min_effect, seeded
from ..runs.configs import Configuration, configurations, mark_baseline
from ..runs.effects import effects
from ..runs.grid import grid_of
from ..runs.plan import Plan, load_plan, save_plan
from ..runs.records import find_runs
from ..runs.verdicts import Verdict, doubling_looks
from .finish import finish_sweep

FAMILIES = ("configurations", "effects")
OPEN = (Verdict.undecided, Verdict.not_tested)

# hydra overrides of the sweep that an extension must set for itself
_OWN_HYDRA_KEYS = (
    "hydra.sweep.dir",
    "hydra.sweep.subdir",
    "hydra.mode",
    "hydra.run.dir",
    "hydra/sweeper",
    "hydra.sweeper",
)
_JOB_NUMBER = re.compile(r"^(\d+)_")
_SEED_SUFFIX = re.compile(r"(^|,)seed=[^,]*$")


def _new_plan(
    configs: list[Configuration],
    base: Configuration,
    max_seeds: int | None,
    min_effect: float | None,
    options: Options,
    by: str = "configurations",
    reference: dict[str, str] | None = None,
) -> Plan:
    first = min(len(c.ok) for c in configs)
    if first < 1:
        empty = [c.label for c in configs if not c.ok]
        raise ValueError(f"no finished run in {', '.join(empty)}: rerun the sweep first")
    looks = doubling_looks(first, max_seeds if max_seeds is not None else max(8, 4 * first))
    if min_effect is None:
        min_effect = default_min_effect(base)
    return Plan(
        looks,
        float(min_effect),
        base.label,
        options.alpha,
        pooled=options.pooled,
        images=options.images,
        family=by,
        reference=dict(reference or {}),
    )


def _check_same(plan: Plan, max_seeds: int | None, min_effect: float | None, by: str) -> None:
    """A plan is fixed before its looks: changing it later would be looking at a fresh alpha."""
    if by != plan.family:
        raise ValueError(f"this sweep's plan spends on {plan.family}, not --by {by}")
    if max_seeds is not None and max_seeds != plan.looks[-1]:
        raise ValueError(f"this sweep's plan ends at {plan.looks[-1]} seeds, not {max_seeds}")
    if min_effect is not None and abs(min_effect - plan.min_effect) > 1e-12:
        raise ValueError(
            f"this sweep's plan fixed --min-effect {plan.min_effect}, not {min_effect}"
        )


def job_stem(run_name: str) -> str:
    """A job's folder name less its number and seed: ``4_act=swish,seed=1`` -> ``act=swish``."""
    return _SEED_SUFFIX.sub("", _JOB_NUMBER.sub("", run_name, count=1))


def _launch(
    sweep: Path,
    record: dict[str, Any],
    batch: list[tuple[Configuration, list[int]]],
    first_number: int,
    look: int,
) -> int:
    """Train a look's new seeds, every configuration's, as one Hydra multirun through the sweep's
    own launcher (side by side where it runs jobs in parallel), its jobs in ``sweep``."""
    hydra_node = record.get("hydra", {})
    hydra_overrides = [
        str(o)
        for o in hydra_node.get("overrides", {}).get("hydra", []) or []
        if not override_key(str(o)).startswith(_OWN_HYDRA_KEYS)
    ]
    jobs, number = [], first_number
    for config, seeds in batch:
        ref = seeded(config)[0]
        overrides = [o for o in ref.overrides if override_key(o) != "trainer.seed"]
        stem = job_stem(ref.name)
        for seed in seeds:
            name = f"{number}_{stem},seed={seed}" if stem else f"{number}_seed={seed}"
            # quoted for Hydra: names hold = and ,; absolute, so the jobs land in the sweep
            folder = f"hydra.sweep.subdir='{sweep / name}'"
            jobs.append([*overrides, f"trainer.seed={seed}", folder])
            number += 1
        print(f"extend: {config.label}: seeds {', '.join(map(str, seeds))}", flush=True)
    # the extension's own multirun.yaml, job list (and a launcher's logs) in a folder of its own
    own = sweep / ".extend" / f"look{look}_{first_number}"
    own.mkdir(parents=True, exist_ok=True)
    (own / "jobs.yaml").write_text(yaml.safe_dump(jobs, width=1 << 16))
    cmd = [
        sys.executable,
        "-m",
        "densenet_exp",
        "-m",
        *hydra_overrides,
        "hydra/sweeper=jobs",
        f"hydra.sweeper.jobs_file={own / 'jobs.yaml'}",
        f"hydra.sweeper.first_job_num={first_number}",
        f"hydra.sweep.dir={own}",
        "~hydra.callbacks.sweep_summary",  # the summary is written once, after the look
    ]
    cwd = hydra_node.get("runtime", {}).get("cwd")
    return subprocess.run(cmd, cwd=cwd if cwd and Path(cwd).is_dir() else None).returncode


def _take_look(sweep: Path, record: dict[str, Any], plan: Plan, todo: list[Configuration]) -> None:
    runs = find_runs(sweep)
    used = {r.seed for r in runs if isinstance(r.seed, int)}
    next_seed = max(used, default=-1) + 1
    numbers = [int(m.group(1)) for r in runs if (m := _JOB_NUMBER.match(r.name))]
    number = max(numbers, default=len(runs) - 1) + 1
    target = plan.looks[plan.taken]
    batch = [
        (config, list(range(next_seed, next_seed + need)))  # the same new seeds for every one
        for config in todo
        if (need := target - len(config.ok)) > 0
    ]
    if batch:
        _launch(sweep.resolve(), record, batch, number, plan.taken + 1)
    plan.history.append(
        {
            "look": plan.taken + 1,
            "seeds": target,
            "trained": {config.label: seeds for config, seeds in batch},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    plan.taken += 1
    save_plan(sweep, plan)


def _reference_cell(
    configs: list[Configuration], reference: dict[str, str] | None
) -> Configuration:
    """The grid's reference cell (the effects' baseline); an error where the runs form no grid."""
    grid = grid_of(configs, reference)
    if grid.why_not:
        raise ValueError(f"--by effects: {grid.why_not}")
    base = grid.cells.get(tuple(grid.reference))
    if base is None:
        raise ValueError(f"--by effects: the reference cell {grid.name(tuple(grid.reference))} "
                         "has no runs")  # fmt: skip
    return base


def _open(configs: list[Configuration], options: Options, plan: Plan) -> list[Configuration]:
    """What the next look trains: by configurations, the baseline and every open comparison;
    by effects, every cell while any effect is open (none once all are decided)."""
    if plan.family == "effects":
        result = effects(configs, None, options, plan)
        return configs if any(r.verdict in OPEN for r in result.family) else []
    rows = compare(configs, None, options, plan)
    todo = [r.config for r in rows if r.verdict in OPEN]
    return [rows[0].baseline, *todo] if todo else []


def extend(
    sweep: str | Path,
    max_seeds: int | None = None,
    min_effect: float | None = None,
    baseline: str | None = None,
    options: Options | None = None,
    once: bool = False,
    plot: bool = True,
    by: str = "configurations",
    reference: dict[str, str] | None = None,
) -> Plan:
    """Run the plan's looks until every comparison (or effect) is decided or the last look is
    taken."""
    if by not in FAMILIES:
        raise ValueError(f"--by {by}: valid choices are {', '.join(FAMILIES)}")
    sweep = Path(sweep)
    record = sweep_record(sweep)
    if record is None:
        raise FileNotFoundError(
            f"{sweep} has no multirun.yaml: extend needs the folder of a sweep "
            "(`python -m densenet_exp -m ...`)"
        )
    options = options or Options()
    plan = load_plan(sweep)
    configs = configurations(find_runs(sweep))
    if plan is None:
        if by == "effects":
            base = _reference_cell(configs, reference)
        else:
            base = mark_baseline(configs, baseline)
        if base is None:
            raise ValueError(f"no runs in {sweep}")
        plan = _new_plan(configs, base, max_seeds, min_effect, options, by, reference)
        save_plan(sweep, plan)
    else:
        _check_same(plan, max_seeds, min_effect, by)
    while not plan.final:
        todo = _open(configs, options, plan)
        if not todo:
            break
        _take_look(sweep, record, plan, todo)
        configs = configurations(find_runs(sweep))
        if once:
            break
    finish_sweep(sweep, plot=plot, options=options)
    return plan
