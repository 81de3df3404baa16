"""The command the closing block prints to continue a run: one that works where the run ran."""

import shlex

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from densenet_exp.closing import resume_command


def run_folder(path, overrides, hydra_overrides=()):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    hydra = {"hydra": {"overrides": {"hydra": list(hydra_overrides), "task": list(overrides)}}}
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    return path


def parsed(command):
    """The words of a printed command as a shell splits them, and Hydra's reading of them."""
    words = shlex.split(command)
    overrides = [w for w in words if "=" in w and not w.startswith("--")]
    return words, {o.key_or_group: o for o in OverridesParser.create().parse_overrides(overrides)}


def test_a_local_run_continues_with_its_own_overrides_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = run_folder(tmp_path / "run", ["act=swish", "trainer.epochs=3", "trainer.resume=auto"])
    words, _ = parsed(resume_command(run, ("trainer.epochs=MORE",)))
    assert words[:3] == ["python", "-m", "densenet_exp"]
    assert words[3:] == [
        "act=swish",
        "trainer.epochs=MORE",
        f"hydra.run.dir={run}",
        "trainer.resume=auto",
    ]


def test_a_submitit_slurm_job_continues_through_the_same_launcher_and_folder(tmp_path):
    sweep = tmp_path / "sweep"
    run = run_folder(
        sweep / "3_act=swish,seed=0",
        ["act=swish", "trainer.seed=0", "dist.nnodes=2", "dist.rdzv_endpoint=slurm"],
        [
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.nodes=2",
            "hydra.launcher.timeout_min=60",
            f"hydra.sweep.dir={sweep}",
            "hydra.mode=MULTIRUN",
        ],
    )
    words, by_key = parsed(resume_command(run))
    assert words[:4] == ["python", "-m", "densenet_exp", "-m"]
    assert by_key["hydra/launcher"].value() == "submitit_slurm"
    assert by_key["hydra.launcher.nodes"].value() == 2
    assert by_key["hydra.sweep.dir"].value() == str(sweep)
    # the job's own folder name, as one string: not a sweep over "3_act=swish" and "seed=0"
    subdir = by_key["hydra.sweep.subdir"]
    assert not subdir.is_sweep_override() and subdir.value() == "3_act=swish,seed=0"
    assert by_key["trainer.resume"].value() == "auto" and "hydra.mode" not in by_key


def test_a_slurm_run_without_submitit_continues_under_srun_on_as_many_nodes(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run = run_folder(tmp_path / "run", ["dist.nnodes=2", "dist.rdzv_endpoint=slurm"])
    words, _ = parsed(resume_command(run))
    assert words[:6] == ["srun", "--nodes=2", "--ntasks-per-node=1", "python", "-m", "densenet_exp"]
    # a one-node run inside a SLURM job: srun again, never the login node
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    one = run_folder(tmp_path / "one", ["act=gelu"])
    assert resume_command(one).startswith("srun --nodes=1 --ntasks-per-node=1 python -m ")
