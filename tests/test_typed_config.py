"""The typed config: what the code receives, how bad values fail, and the plain-dict boundary."""

import pickle

import pytest
import torch
import yaml
from conftest import TINY, compose_cfg
from omegaconf import OmegaConf

from densenet_exp import train
from densenet_exp.config import (
    ActName,
    Config,
    ConfigError,
    DataConfig,
    DistConfig,
    OptLevel,
    config_dir,
    to_plain,
    to_typed,
)
from densenet_exp.engine import rank as rank_module


def test_the_ranks_receive_the_schema_dataclasses_not_dicts(tmp_path, monkeypatch):
    seen = []

    def fake_fit(cfg, run_dir, ctx, tracked=None):
        seen.append(cfg)
        return {"status": "completed", "best_val_top1": None, "wall_s": 0.0, "img_per_s": 0.0}

    monkeypatch.setattr(rank_module, "fit", fake_fit)
    train(compose_cfg([*TINY, "amp=O1", "data.num_workers=2"]), tmp_path / "run")
    (cfg,) = seen
    assert type(cfg) is Config and type(cfg.data) is DataConfig
    assert cfg.amp.opt_level is OptLevel.O1 and cfg.data.workers == 2
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # what a spawned rank is handed


def test_a_bad_choice_names_the_key_and_the_valid_ones_from_the_schema():
    on_disk = sorted(p.stem for p in (config_dir() / "act").glob("*.yaml"))
    with pytest.raises(ConfigError) as e:
        to_typed({"act": {"name": "relux"}})
    message = str(e.value)
    assert message.startswith("unknown act.name 'relux'; valid choices: ")
    listed = message.split("valid choices: ")[1].split(", ")
    assert sorted(set(listed) - {"custom"}) == on_disk  # every shipped option, and only those
    assert [m.value for m in ActName] == listed


@pytest.mark.parametrize(
    "cls, key, value, message",
    [
        (DataConfig, "num_workers", "many", "data.num_workers must be 'auto' or a number >= 0"),
        (DataConfig, "num_workers", "-1", "data.num_workers must be >= 0"),
        (DistConfig, "nproc_per_node", "two", "dist.nproc_per_node must be 'auto' or a number"),
    ],
)
def test_auto_or_a_number_is_parsed_once_where_the_schema_is(cls, key, value, message):
    assert getattr(cls(**{key: "auto"}), "workers" if cls is DataConfig else "nproc") is None
    assert getattr(cls(**{key: "3"}), "workers" if cls is DataConfig else "nproc") == 3
    with pytest.raises(ValueError, match=message):
        cls(**{key: value})


def test_the_checkpoint_holds_the_config_as_composed_and_plain(tmp_path):
    # digits smaller than the model needs are upscaled (a derived value): never written back
    overrides = [*TINY, "data=digits", "data.image_size=2", "model.block_config=[2,2,2]"]
    overrides = [o for o in overrides if not o.startswith("data.synthetic")]
    overrides.append(f"data.root={tmp_path / 'digits'}")
    composed = compose_cfg(overrides)
    train(composed, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    saved = state["config"]
    assert saved == OmegaConf.to_container(composed, resolve=True, enum_to_str=True)
    assert saved["data"]["image_size"] == 2  # as composed
    assert state["eval_transform"]["image_size"] == 4  # what the model was trained at
    assert to_typed(saved) == to_typed(composed)  # and it reads back into the same config
    assert yaml.safe_load(yaml.safe_dump(saved)) == saved  # plain containers only


def test_to_plain_and_to_typed_are_inverse():
    cfg = to_typed(compose_cfg(["amp=O2", "act=prelu", "optim=adamw"]))
    plain = to_plain(cfg)
    assert plain["amp"]["opt_level"] == "O2" and type(plain["amp"]["opt_level"]) is str
    assert to_typed(plain) == cfg
