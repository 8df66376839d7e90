"""The main path end to end: Hydra config → tiny model → lmms-eval's own tasks → records → table."""

import json
import subprocess
import sys

from gc2bench.config import compose_run_config
from gc2bench.run import run


def compose_config(*overrides):
    return compose_run_config(list(overrides), check=False)


def test_defaults_are_tiny_smoke_and_the_authors_ratio():
    cfg = compose_config()
    assert (cfg.model.name, cfg.suite.name, cfg.compressor.name, cfg.ratio) == ("tiny", "smoke", "none", 0.25)


def test_run_records_and_table(tmp_path, cache_dir, capsys):
    baseline = run(compose_config(f"results_dir={tmp_path}", "compressor=none"))
    assert [r["task"] for r in baseline] == ["pope", "vqav2_val"]
    for record in baseline:
        assert record["status"] == "done" and record["ratio"] == 1.0
        assert record["tokens"]["visual_tokens_kept"] == record["tokens"]["visual_tokens_before"]
        assert record["metrics"]["metric"] in record["metrics"]
        assert set(record["versions"]) >= {"gc2bench", "torch", "transformers", "lmms_eval"}
        assert record["config"]["model"]["name"] == "tiny"
        assert record["efficiency"]["failed_samples"] == 0
        assert len(record["samples"]) == record["efficiency"]["samples"] > 0
    pope = baseline[0]
    assert pope["metrics"]["score"] == 100 * pope["metrics"]["pope_accuracy"]
    answers = [s["answer"] for s in pope["samples"]]
    assert sum(s["answer"] == s["target"] for s in pope["samples"]) == round(5 * pope["metrics"]["pope_accuracy"])
    assert all(isinstance(a, str) for a in answers)

    compressed = run(compose_config(f"results_dir={tmp_path}", "compressor=globalcom2", "ratio=0.1"))
    for record in compressed:
        assert record["ratio"] == 0.1 and record["compressor"]["name"] == "globalcom2"
        assert record["tokens"]["visual_tokens_kept"]["mean"] < record["tokens"]["visual_tokens_before"]["mean"]
    printed = capsys.readouterr().out
    assert "pope" in printed and "→" in printed

    assert run(compose_config(f"results_dir={tmp_path}", "compressor=globalcom2", "ratio=0.1")) == []
    assert len(list(tmp_path.rglob("*.json"))) == 4

    table = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", str(tmp_path), "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert table[0] == "model,Method,R,vqav2_val,pope,Average (%)"
    rows = {line.split(",")[1]: line.split(",") for line in table[1:]}
    assert rows["none"][-1] == "100.0"
    expected = [100 * c["metrics"]["score"] / b["metrics"]["score"] for c, b in zip(compressed, baseline)]
    assert rows["globalcom2"][-1] == f"{sum(expected) / 2:.1f}"
    saved = json.loads((next(tmp_path.rglob("globalcom2_*")) / "pope.json").read_text())
    assert saved["compressor"]["params"]["ratio"] == 0.1
