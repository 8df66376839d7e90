"""Every YAML in conf/ composes, and each `_target_` binds its arguments (no weights loaded)."""

import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate

from conftest import REPO
from gc2bench.config import ConfigError, build_compressor, compose_run_config

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


@pytest.mark.parametrize("override", ["views=crops_only", "drop_crop.which=least", "fastv.decode=static",
                                      "pdrop.layers=[1,2,3]", "sparsevlm.version=v1", "sparsevlm.counting=entering"])
def test_compressor_options_are_not_top_level_keys(override):
    with pytest.raises(ConfigError, match=f"Could not override '{override.split('=')[0]}'"):
        compose_run_config(["compressor=none", override], check=False)


def test_compressor_options_merge_into_the_named_compressor_only():
    options = ["+compressor_options.pdrop.layers=[1,2,3]", "+compressor_options.fastv.decode=static"]
    pdrop = compose_run_config(["compressor=pdrop", *options])
    assert list(pdrop.compressor.layers) == [1, 2, 3] and "decode" not in pdrop.compressor
    assert build_compressor(pdrop).params()["layers"] == [1, 2, 3]
    fastv = compose_run_config(["compressor=fastv", *options])
    assert fastv.compressor.decode == "static" and build_compressor(fastv).params()["decode"] == "static"
    assert compose_run_config(["compressor=fastv"]).compressor.decode == "reselect"


@pytest.mark.parametrize("override, message", [
    ("+compressor_options.pdropp.layers=[1]", "compressor_options.pdropp: no such compressor"),
    ("+compressor_options.pdrop.layer=[1]", "compressor_options.pdrop.layer: pdrop has no option layer"),
])
def test_compressor_options_name_a_compressor_and_its_options(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_run_config(["compressor=pdrop", override])
