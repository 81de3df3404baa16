import subprocess

import pytest
from conftest import PYTHON, ROOT, compose_cfg
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from densenet_exp.config import (
    LIST_GROUPS,
    NODE_GROUPS,
    PRESET_GROUPS,
    Config,
    config_dir,
    to_plain,
)

GROUPS = [*NODE_GROUPS, *PRESET_GROUPS]


def options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_of_every_group_composes(group, option):
    extra = ["data.root=/tmp/x"] if (group, option) == ("data", "imagefolder") else []
    cfg = compose_cfg([f"{group}={option}", *extra])
    if group not in ("experiment", "hparams_search"):
        assert cfg[group] is not None
        name_key = {"conv": "type", "norm": "type", "amp": "opt_level"}.get(group, "name")
        assert str(getattr(cfg[group], name_key)).split(".")[-1] == option
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_the_groups_are_the_config_tree_s_folders():
    folders = {p.name for p in config_dir().iterdir() if p.is_dir()}
    assert folders == set(GROUPS) | set(LIST_GROUPS)  # logger: tests/test_tracking.py
    assert set(NODE_GROUPS) <= set(to_plain(Config()))  # each sets one node of the schema


def test_the_schema_s_defaults_are_the_composed_default_config():
    """One definition: the dataclasses are the default; option files only change it."""
    composed = OmegaConf.to_container(compose_cfg(), resolve=True, enum_to_str=True)
    assert to_plain(Config()) == composed


@pytest.mark.parametrize("group", NODE_GROUPS)
def test_an_option_file_holds_only_what_differs_from_the_schema(group):
    defaults = to_plain(Config())[group]
    for path in (config_dir() / group).glob("*.yaml"):
        option = OmegaConf.to_container(OmegaConf.load(path))
        same = {
            k: v
            for k, v in option.items()
            if defaults.get(k) == v and k not in ("name", "type", "opt_level")
        }
        assert not same, f"{path.name} repeats the schema's defaults: {same}"


def test_defaults_are_the_documented_ones():
    cfg = compose_cfg()
    assert cfg.model.name == "densenet_bc_digits"
    assert (cfg.conv.type.value, cfg.act.name.value, cfg.amp.opt_level.value) == (
        "standard",
        "relu",
        "O0",
    )
    assert (cfg.init.name.value, cfg.data.name.value, cfg.optim.name.value) == (
        "kaiming",
        "digits",
        "sgd",
    )
    assert cfg.sched.name.value == "cos" and cfg.sync_bn is False
    assert cfg.dist.nproc_per_node == "auto"


@pytest.mark.parametrize(
    "override, error",
    [
        ("trainer.epoch=3", ConfigCompositionException),  # misspelled key
        ("conv=dsconvv", ConfigCompositionException),  # misspelled option
        ("act.name=swich", ConfigCompositionException),  # misspelled enum value
        ("amp.opt_level=O5", ConfigCompositionException),
    ],
)
def test_a_typo_fails_at_composition(override, error):
    with pytest.raises(error):
        compose_cfg([override])


def test_typed_nodes_reject_wrong_types():
    cfg = compose_cfg()
    with pytest.raises(ValidationError):
        cfg.trainer.epochs = "many"
    with pytest.raises(ConfigAttributeError):
        cfg.model.width = 3  # no such key (model.depth exists: the CIFAR presets' L)


def test_cli_typo_fails_before_any_work_with_hydras_message(tmp_path):
    run = subprocess.run(
        [PYTHON, "-m", "densenet_exp", "act=swich", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Could not find 'act/swich'" in run.stderr
    assert "Available options" in run.stderr and "swish" in run.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("preset", [o for o in options("experiment") if o.startswith("ablation_")])
def test_every_ablation_preset_repeats_each_configuration_over_three_seeds(preset):
    cfg = compose_cfg([f"experiment={preset}"], hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["trainer.seed"] == "range(3)"
    assert len(params) >= 2  # and sweeps something besides the seed
