"""Every YAML in conf/ composes, and each `_target_` binds its arguments (no weights loaded)."""

import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate

from conftest import REPO

CONF = REPO / "conf"


def choices(group):
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def composed(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("name", choices("model"))
def test_model_configs_bind(name):
    cfg = composed(f"model={name}")
    params = {k: v for k, v in cfg.model.items() if k != "_target_"}
    inspect.signature(get_method(cfg.model._target_)).bind(compressor=None, **params)
    assert cfg.model.name == name


@pytest.mark.parametrize("name", choices("compressor"))
def test_compressor_configs_instantiate(name):
    node = composed(f"compressor={name}", "ratio=0.5").compressor
    compressor = instantiate(node)
    assert compressor.name == name
    assert compressor.params()["ratio"] == (0.5 if "ratio" in node else 1.0)  # none, views, drop_crop: no ratio
    assert (name in ("none", "views", "drop_crop")) == ("ratio" not in node)


@pytest.mark.parametrize("name", choices("suite"))
def test_suite_configs_name_tasks_and_metrics(name):
    suite = composed(f"suite={name}").suite
    assert suite.name == name and suite.tasks
    for entry in suite.tasks:
        assert entry.task and entry.metric
