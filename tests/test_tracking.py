"""tracking=wandb logs a run's config, metrics and tables to Weights & Biases, offline here."""

import json
import os
import subprocess
import sys
import time

import pytest

from gc2bench.config import ConfigError, compose_run_config
from gc2bench.run import run

from conftest import REPO


def compose_config(*overrides):
    return compose_run_config(list(overrides), check=False)


def read_offline_run(path, timeout=60):
    """(config, history keys, summary) of an offline W&B run file, once W&B's service has written
    its exit record (it writes the file asynchronously)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    deadline = time.monotonic() + timeout
    while True:
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        config, history, summary, finished = {}, set(), {}, False
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "history":
                history.update(item.key or "/".join(item.nested_key) for item in record.history.item)
            elif kind == "summary":
                summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
            finished |= kind == "exit"
        if finished or time.monotonic() > deadline:
            return config, history, summary
        time.sleep(0.5)


def test_off_by_default():
    assert compose_config().tracking.name == "none"


@pytest.mark.slow
def test_wandb_offline_logs_config_metrics_and_tables(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config(
        f"results_dir={tmp_path / 'results'}",
        "compressor=globalcom2",
        "ratio=0.5",
        "tasks=[pope]",
        "suite.limit=2",
        "tracking=wandb",
        f"tracking.dir={tmp_path}",
    )
    records = run(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    config, history, summary = read_offline_run(next(runs[0].glob("*.wandb")))
    assert config["compressor"]["name"] == "globalcom2" and config["ratio"] == 0.5
    for record in records:
        task = record["task"]
        assert summary[f"{task}/score"] == record["metrics"]["score"]
        assert f"{task}/tokens/visual_tokens_kept" in summary and f"{task}/samples/_type" in history
        assert record["tracking"]["wandb"]["id"] in runs[0].name
    assert "tasks/_type" in history
    samples = json.loads(next(runs[0].rglob("pope/samples_*.table.json")).read_text())
    assert samples["columns"][:3] == ["doc_id", "answer", "target"] and len(samples["data"]) == 2


def test_unknown_tracker_is_refused_before_loading(tmp_path):
    with pytest.raises(
        ConfigError, match="Could not find 'tracking/mlflow' Available options in 'tracking': none wandb"
    ):
        run(compose_config(f"results_dir={tmp_path}", "tracking=mlflow"))
    with pytest.raises(ConfigError, match="tracking=mlflow is not one of none, wandb"):
        run(compose_config(f"results_dir={tmp_path}", "tracking.name=mlflow"))


def test_wandb_online_without_key_is_one_line_before_loading(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("")
    done = subprocess.run(
        [sys.executable, "run.py", "tracking=wandb", f"results_dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no W&B API key" in lines[0] and "tracking.mode=offline" in lines[0]
    assert not list(tmp_path.rglob("*.json"))


def test_wandb_mode_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="tracking.mode=onlin is not one of"):
        run(compose_config(f"results_dir={tmp_path}", "tracking=wandb", "tracking.mode=onlin"))
