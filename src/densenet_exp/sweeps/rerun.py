"""``runs rerun``: a run trained again with changed overrides, in a new folder beside a record of
its parent and the diff to it. It launches a job, so it sits above the run tools."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from ..overrides import override_key, override_value
from ..runs.diff import diff_runs, format_diff, merge_overrides
from ..runs.records import load_run


def rerun(run_dir: str | Path, overrides: list[str], out_dir: str | Path | None = None) -> Path:
    """Re-compose from the primary config + the run's overrides + ``overrides`` and train.

    Composing again (not loading the saved flat config.yaml) keeps group overrides as groups:
    ``conv=dsconv`` switches the whole conv node, as on the command line.
    """
    parent = load_run(run_dir)
    if not (parent.path / ".hydra" / "overrides.yaml").is_file():
        raise FileNotFoundError(f"{parent.path} has no .hydra/overrides.yaml: not a run directory")
    # hydra.run.dir among the overrides means what it means on any command line: the run's folder
    asked = [override_value(o) for o in overrides if override_key(o) == "hydra.run.dir"]
    overrides = [o for o in overrides if override_key(o) != "hydra.run.dir"]
    if len(set(asked)) > 1:
        raise ValueError(f"hydra.run.dir given twice with different folders: {', '.join(asked)}")
    if asked and out_dir is not None and Path(asked[0]).resolve() != Path(out_dir).resolve():
        raise ValueError(
            f"--out {out_dir} and hydra.run.dir={asked[0]} name different folders: give one"
        )
    out_dir = out_dir if out_dir is not None else (asked[0] if asked else None)
    merged = merge_overrides(parent.overrides, overrides)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    new_dir = Path(out_dir) if out_dir else Path("outputs") / f"{stamp}_rerun"
    new_dir.mkdir(parents=True, exist_ok=True)
    (new_dir / "parent.txt").write_text(
        f"{parent.path.resolve()}\nnew overrides: {' '.join(overrides) or '(none)'}\n"
    )
    cmd = [sys.executable, "-m", "densenet_exp", *merged, f"hydra.run.dir={new_dir}"]
    print("rerun:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd)
    child = load_run(new_dir)
    (new_dir / "diff.txt").write_text(format_diff(parent, child, diff_runs(parent, child)) + "\n")
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return new_dir
