"""gc2bench as an lmms-eval plugin: ``--model gc2bench --model_args <Hydra overrides>``.

The entry point must be installed (``pip install -e .`` registers ``lmms_eval.models`` →
``gc2bench``). The CLI test runs ``python -m lmms_eval`` on a real task definition offline: an
``--include_path`` task that includes lmms-eval's own pope.yaml under a new name and points it
at the POPE fixture (a task reusing a built-in name would be ignored).
"""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gc2bench.config import ConfigError
from gc2bench.evaluation.fixtures import build_fixture
from gc2bench.evaluation.lmms_model import GC2BenchModel, split_model_args
from gc2bench.evaluation.suite import task_manager, task_spec, use_offline_hub

MODEL_ARGS = "compressor=globalcom2,ratio=0.1,model=tiny"


def test_entry_point_registers_gc2bench_with_lmms_eval():
    (entry,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "gc2bench"]
    manifest = entry.load()()
    assert manifest.model_id == "gc2bench"
    from lmms_eval.models import get_model

    assert get_model("gc2bench") is GC2BenchModel and GC2BenchModel.is_simple


def test_model_args_are_hydra_overrides_of_the_run_config(cache_dir):
    lm = GC2BenchModel.create_from_arg_string(
        MODEL_ARGS + ",compressor.tau=5", {"batch_size": "2", "max_batch_size": None, "device": "cpu"}
    )
    assert lm.adapter.name == "tiny" and lm.batch_size == 2
    assert lm.adapter.compressor.name == "globalcom2"
    assert lm.adapter.compressor.params()["ratio"] == 0.1 and lm.adapter.compressor.params()["tau"] == 5
    assert "globalcom2" in str(lm) and "0.1" in str(lm)  # lmms-eval's response cache key
    assert lm.run_config.model.device == "cpu"


@pytest.mark.parametrize(
    "model_args, message",
    [
        ("compressor=nosuch,model=tiny", "compressor"),
        ("ratio=2,model=tiny", "ratio=2 is out of range"),
        ("model=tiny,globalcom2", "'globalcom2' is not key=value"),
    ],
)
def test_bad_model_args_are_refused_with_the_value_named(model_args, message, cache_dir):
    with pytest.raises(ConfigError, match=message):
        GC2BenchModel.create_from_arg_string(model_args)


def test_model_args_split_at_top_level_commas_only():
    assert split_model_args("a=1, b=[2,3],c='x,y',d={e: 1, f: 2}") == ["a=1", "b=[2,3]", "c='x,y'", "d={e: 1, f: 2}"]
    assert split_model_args("") == []


def test_simple_evaluate_with_the_model_name(cache_dir):
    from lmms_eval.evaluator import simple_evaluate

    use_offline_hub()
    entry = {"task": "pope", "fixture": "pope", "metric": "pope_f1_score"}
    output = simple_evaluate(
        model="gc2bench",
        model_args=MODEL_ARGS,
        tasks=[task_spec(entry)],
        task_manager=task_manager(),
        limit=2,
        batch_size=1,
        log_samples=True,
        bootstrap_iters=0,
    )
    assert set(output["results"]["pope"]) >= {"pope_f1_score,none", "pope_accuracy,none"}
    assert [sample["doc_id"] for sample in output["samples"]["pope"]] == [0, 1]
    assert "globalcom2" in output["config"]["model_args"]


def lmms_eval_cli_on_pope(tmp_path, cache_dir, task: str, data_file) -> subprocess.CompletedProcess:
    """``python -m lmms_eval --model gc2bench`` on a POPE task (lmms-eval's own yaml) reading ``data_file``."""
    import lmms_eval

    pope_yaml = Path(lmms_eval.__file__).parent / "tasks" / "pope" / "pope.yaml"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{task}.yaml").write_text(
        f"task: {task}\ninclude: {pope_yaml}\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GC2BENCH_CACHE": str(cache_dir)}
    command = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "gc2bench",
        "--model_args",
        MODEL_ARGS,
        "--tasks",
        task,
        "--include_path",
        str(tasks),
        "--limit",
        "2",
        "--output_path",
        str(tmp_path / "out"),
        "--verbosity",
        "WARNING",
    ]
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_lmms_eval_cli_runs_gc2bench_offline(cache_dir, tmp_path):
    done = lmms_eval_cli_on_pope(tmp_path, cache_dir, "gc2bench_fixture_pope", build_fixture("pope"))
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("*_results.json")
    scores = json.loads(results.read_text())["results"]["gc2bench_fixture_pope"]
    assert 0 <= scores["pope_f1_score,none"] <= 1 and scores["pope_yes_ratio,none"] == 0.5


def test_lmms_eval_cli_exits_nonzero_when_a_gc2bench_evaluation_fails(cache_dir, tmp_path):
    done = lmms_eval_cli_on_pope(tmp_path, cache_dir, "gc2bench_missing_pope", tmp_path / "no-such.parquet")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "gc2bench: lmms-eval reported 1 failed evaluation(s) (above); exit status 1" in done.stderr
