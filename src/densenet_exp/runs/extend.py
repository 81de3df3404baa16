"""``runs extend``: more seeds, only where the comparison is still open, at planned looks.

The first call writes the plan (``plan.Plan``: seeds per look doubling up to ``--max-seeds``, the
minimum effect, the baseline, the test); each look then trains the next seeds of the baseline and
of every configuration still undecided, through the sweep's own launcher (the ``hydra/launcher``
and its settings recorded in ``multirun.yaml``) into the sweep's own folder, under the names the
sweep gives its jobs, with seeds no run of the sweep has used. ``compare`` reads the plan and tests
look j on each configuration's first n_j seeds at the level the plan spends there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..metrics import Status
from ..overrides import override_key, sweep_record
from ..tracking.sweep import log_sweep
from .compare import Options, compare, default_min_effect, seeded
from .configs import Configuration, configurations, mark_baseline
from .plan import Plan, load_plan, save_plan
from .records import find_runs
from .report import write_compare, write_summary
from .verdicts import Verdict, doubling_looks

# hydra overrides of the sweep that an extension must set for itself
_OWN_HYDRA_KEYS = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode", "hydra.run.dir")
_JOB_NUMBER = re.compile(r"^(\d+)_")
_SEED_SUFFIX = re.compile(r"(^|,)seed=[^,]*$")


def _new_plan(
    configs: list[Configuration],
    base: Configuration,
    max_seeds: int | None,
    min_effect: float | None,
    options: Options,
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
    )


def _check_same(plan: Plan, max_seeds: int | None, min_effect: float | None) -> None:
    """A plan is fixed before its looks: changing it later would be looking at a fresh alpha."""
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
    config: Configuration,
    seeds: list[int],
    first_number: int,
    look: int,
) -> int:
    """Train ``seeds`` of ``config`` as one Hydra multirun whose jobs land in ``sweep``."""
    ref = seeded(config)[0]
    overrides = [o for o in ref.overrides if override_key(o) != "trainer.seed"]
    hydra_node = record.get("hydra", {})
    hydra_overrides = [
        str(o)
        for o in hydra_node.get("overrides", {}).get("hydra", []) or []
        if override_key(str(o)) not in _OWN_HYDRA_KEYS
    ]
    stem = job_stem(ref.name)
    name = f"{stem}," if stem else ""
    subdir = f"{sweep.resolve()}/${{densenet_exp.add:${{hydra.job.num}},{first_number}}}_{name}"
    cmd = [
        sys.executable,
        "-m",
        "densenet_exp",
        "-m",
        *overrides,
        f"trainer.seed={','.join(map(str, seeds))}",
        # the sweep's own launcher and its settings; the jobs' folders in the sweep itself, while
        # the extension's multirun.yaml (and a launcher's logs) go to a folder of their own
        *hydra_overrides,
        f"hydra.sweep.dir={sweep.resolve()}/.extend/look{look}_{first_number}",
        f"hydra.sweep.subdir='{subdir}seed=${{trainer.seed}}'",
        "hydra.sweeper.params=null",  # a preset's sweep axes must not sweep again
        "~hydra.callbacks.sweep_summary",  # the summary is written once, after the look
    ]
    cwd = hydra_node.get("runtime", {}).get("cwd")
    print(f"extend: {config.label}: seeds {', '.join(map(str, seeds))}", flush=True)
    return subprocess.run(cmd, cwd=cwd if cwd and Path(cwd).is_dir() else None).returncode


def _take_look(sweep: Path, record: dict[str, Any], plan: Plan, todo: list[Configuration]) -> None:
    runs = find_runs(sweep)
    used = {r.seed for r in runs if isinstance(r.seed, int)}
    next_seed = max(used, default=-1) + 1
    numbers = [int(m.group(1)) for r in runs if (m := _JOB_NUMBER.match(r.name))]
    number = max(numbers, default=len(runs) - 1) + 1
    target = plan.looks[plan.taken]
    launched = {}
    for config in todo:
        need = target - len(config.ok)
        if need <= 0:
            continue
        seeds = list(range(next_seed, next_seed + need))  # the same new seeds for every one
        _launch(sweep, record, config, seeds, number, plan.taken + 1)
        launched[config.label] = seeds
        number += need
    plan.history.append(
        {
            "look": plan.taken + 1,
            "seeds": target,
            "trained": launched,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    plan.taken += 1
    save_plan(sweep, plan)


def extend(
    sweep: str | Path,
    max_seeds: int | None = None,
    min_effect: float | None = None,
    baseline: str | None = None,
    options: Options | None = None,
    once: bool = False,
    plot: bool = True,
) -> Plan:
    """Run the plan's looks until every comparison is decided or the last look is taken."""
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
        base = mark_baseline(configs, baseline)
        if base is None:
            raise ValueError(f"no runs in {sweep}")
        plan = _new_plan(configs, base, max_seeds, min_effect, options)
        save_plan(sweep, plan)
    else:
        _check_same(plan, max_seeds, min_effect)
    while not plan.final:
        rows = compare(configs, None, options, plan)
        open_ = [r.config for r in rows if r.verdict in (Verdict.undecided, Verdict.not_tested)]
        if not open_:
            break
        _take_look(sweep, record, plan, [rows[0].baseline, *open_])
        configs = configurations(find_runs(sweep))
        if once:
            break
    runs = find_runs(sweep)  # read once for the summary, the comparison and MLflow
    jobs = write_summary(sweep, plot=plot, runs=runs)
    rows, _ = write_compare([sweep], sweep, plot=plot, options=options, runs=runs)
    log_sweep(sweep, runs, rows, sum(j["status"] != Status.ok for j in jobs))
    return plan
