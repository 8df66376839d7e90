"""`gc2bench bench gpu` at tiny shapes on the CPU: the command the GPU machine runs, so it cannot rot."""

import json

import pytest

from gc2bench.cli import main
from gc2bench.config import config_names

LLM_STAGE = {"fastv", "pdrop", "sparsevlm", "fastv_globalcom2", "sparsevlm_globalcom2"}


@pytest.mark.slow
def test_bench_gpu_on_cpu(tmp_path, cache_dir, capsys):
    budget = 420
    assert (
        main(
            [
                "bench",
                "gpu",
                "--budget",
                str(budget),
                "--out",
                str(tmp_path),
                "--repeats",
                "1",
                "--decode-tokens",
                "3",
                "--max-batch",
                "2",
                "--ratios",
                "0.5,0.1",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    markdown = (tmp_path / "bench_gpu.md").read_text()
    assert capsys.readouterr().out.strip() == markdown.strip()
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert set(result["parts"]) == {"tests", "llava_next", "onevision", "kv_cache"}
    assert result["parts"]["tests"]["status"] == "passed"
    assert result["elapsed_s"] <= budget + 60
    not_run = " ".join(result["not_run"])
    for part, model in (("llava_next", "tiny"), ("onevision", "tiny_onevision")):
        data = result["parts"][part]
        assert data["model"] == model
        rows = {(row["method"], row["ratio"]): row for row in data["rows"]}
        none = rows[("none", 1.0)]
        assert none["status"] == "ok" and none["speedup"] == 1.0
        for name in config_names("compressor"):
            ran = [row for (method, _), row in rows.items() if method == name]
            assert ran or f"{part} sdpa {name} " in not_run, name
            for row in ran:
                assert row["status"] == "ok" or (row["status"] == "unreachable" and name in LLM_STAGE), row
                if row["status"] != "ok":
                    continue
                assert row["visual_tokens_kept"] <= row["visual_tokens_before"] or name == "globalcom2"
                assert row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0 and row["samples_per_s"] > 0
                assert row["host_syncs"] is None and row["peak_memory_mb"] is None  # CUDA-only figures
                assert 0 <= row["compression_pct_of_prefill"]
                if name in LLM_STAGE:
                    assert row["layer_averaged_image_tokens"] < row["visual_tokens_before"]
    fastv = [row for row in result["parts"]["llava_next"]["rows"] if row["method"] == "fastv"]
    assert fastv and all(row["analytic_speedup"] > 1 for row in fastv)
    batches = [row["largest_batch"] for row in result["parts"]["llava_next"]["rows"] if "largest_batch" in row]
    assert batches and all(batch["batch"] == 2 for batch in batches)
    kv = result["parts"]["kv_cache"]
    assert {row["method"] for row in kv["rows"]} | {n.split()[-1] for n in kv["not_run"]} == LLM_STAGE
    assert kv["rows"] and all(row["ok"] and row["same_tokens"] for row in kv["rows"])
    assert all(goal["met"] is None for goal in result["goals"])
    assert "## Goals" in markdown and "KV cache" in markdown


def test_bench_gpu_refuses_bad_values(capsys):
    assert main(["bench", "gpu", "--compressors", "globalcom3"]) == 2
    assert "--compressors: unknown globalcom3" in capsys.readouterr().err
    assert main(["bench", "gpu", "--parts", "llava_nxt"]) == 2
    assert "--parts: unknown llava_nxt" in capsys.readouterr().err
    assert main(["bench", "gpu", "--ratios", "0"]) == 2
    assert "ratio=0" in capsys.readouterr().err
