"""Every YAML in conf/ composes, and each `_target_` binds its arguments (no weights loaded)."""

import inspect

import pytest
from hydra.utils import get_method, instantiate

from gc2bench.config import ConfigError, build_compressor, compose_run_config, suite_tasks

from conftest import REPO

CONF = REPO / "conf"


def choices(group):
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def composed(*overrides):
    return compose_run_config(list(overrides), check=False)


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
    entries = suite_tasks(suite)
    assert suite.name == name and entries and [entry["task"] for entry in entries] == list(suite.tasks)
    for entry in entries:
        assert entry["task"] and entry["metric"]


@pytest.mark.parametrize(
    "override",
    [
        "views=crops_only",
        "drop_crop.which=least",
        "fastv.decode=static",
        "pdrop.layers=[1,2,3]",
        "sparsevlm.version=v1",
        "sparsevlm.counting=entering",
    ],
)
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


def test_an_option_set_both_ways_is_an_error_not_a_silent_choice():
    """An experiment's compressor_options never silently replace a command-line compressor.<option>."""
    experiment = ["experiment=aaai_table1_llm", "compressor=pdrop", "model=tiny_deep", "suite=paper10_fixtures"]
    assert build_compressor(compose_run_config(experiment, check=False)).params()["layers"] == [2, 8, 16]
    with pytest.raises(
        ConfigError,
        match=r"compressor.layers=\[1, 2, 3\] and compressor_options.pdrop.layers=.* are "
        "both set",
    ):
        compose_run_config([*experiment, "compressor.layers=[1,2,3]"], check=False)
    with pytest.raises(ConfigError, match="compressor.layers=auto and compressor_options.pdrop.layers=.* are both set"):
        compose_run_config([*experiment, "compressor.layers=auto"], check=False)  # the YAML's default, typed
    same = compose_run_config(
        ["compressor=pdrop", "compressor.layers=[1,2,3]", "+compressor_options.pdrop.layers=[1,2,3]"]
    )
    assert build_compressor(same).params()["layers"] == [1, 2, 3]


@pytest.mark.parametrize(
    "override, message",
    [
        ("+compressor_options.pdropp.layers=[1]", "compressor_options.pdropp: no such compressor"),
        ("+compressor_options.pdrop.layer=[1]", "compressor_options.pdrop.layer: pdrop has no option layer"),
    ],
)
def test_compressor_options_name_a_compressor_and_its_options(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_run_config(["compressor=pdrop", override])


def test_suite_tasks_are_keyed_by_task_name_in_the_suites_order():
    cfg = compose_run_config(["suite=paper10_fixtures", "suite.tasks.textvqa_val.ocr_tokens=true"])
    entries = suite_tasks(cfg.suite)
    assert [entry["task"] for entry in entries][:5] == [
        "vqav2_val",
        "gqa",
        "vizwiz_vqa_val",
        "scienceqa_img",
        "textvqa_val",
    ]
    assert entries[4] == {
        "task": "textvqa_val",
        "fixture": "textvqa",
        "metric": "exact_match",
        "scale": 100,
        "ocr_tokens": True,
    }
    assert [entry for entry in entries if entry.get("ocr_tokens")] == [entries[4]]
    with pytest.raises(ConfigError, match="Could not override 'suite.tasks.textvqa.ocr_tokens'"):
        compose_run_config(["suite=paper10_fixtures", "suite.tasks.textvqa.ocr_tokens=true"])


@pytest.mark.parametrize(
    "tasks, message",
    [
        ([{"task": "pope", "metric": "pope_accuracy"}], "suite=s: tasks must map each task name to its entry"),
        (
            {"pope": {"task": "mme", "metric": "pope_accuracy"}},
            "suite=s task pope: its entry names another task ('mme')",
        ),
        ({"pope": "pope_accuracy"}, "suite=s task pope: its entry must be a mapping"),
    ],
)
def test_suite_tasks_refuse_a_malformed_entry(tasks, message):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        suite_tasks(OmegaConf.create({"name": "s", "tasks": tasks}))
