"""`gc2bench bench prefill` smoke run on the tiny preset: row structure and monotone tokens / TFLOPs."""

import json

from gc2bench.cli import main

FIELDS = {"method", "ratio", "status", "visual_tokens_before", "visual_tokens_kept", "layer_averaged_image_tokens",
          "text_tokens", "tflops", "kv_cache_mb", "prefill_ms", "compression_ms", "vision_ms", "speedup",
          "analytic_speedup", "share_of_limit", "overhead_pct", "prefill_cpu_ms", "cpu_speedup", "setup"}


def test_bench_prefill_json_rows(capsys, cache_dir):
    code = main(["bench", "prefill", "--model", "tiny", "--compressors", "globalcom2,pdrop",
                 "--ratios", "1,0.5,0.1", "--repeats", "1", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["ratio"]) for r in rows] == [("none", 1.0)] + [
        (m, r) for m in ("globalcom2", "pdrop") for r in (1.0, 0.5, 0.1)]
    ok = [r for r in rows if r["status"] == "ok"]
    for row in ok:
        assert FIELDS <= set(row)
        assert row["tflops"] > 0 and row["kv_cache_mb"] > 0 and row["prefill_ms"] > 0
    none = rows[0]
    assert none["speedup"] == 1 and none["analytic_speedup"] == 1
    assert none["setup"]["llm"]["num_layers"] == 4

    ours = [r for r in rows if r["method"] == "globalcom2"]
    kept = [r["visual_tokens_kept"] for r in ours]
    flops = [r["tflops"] for r in ours]
    assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]
    assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]
    assert all(r["layer_averaged_image_tokens"] is None for r in ours)
    assert [r["analytic_speedup"] for r in ours] == sorted(r["analytic_speedup"] for r in ours)

    pdrop = [r for r in rows if r["method"] == "pdrop"]
    assert pdrop[-1]["status"] == "unreachable" and "cannot be reached" in pdrop[-1]["reason"]
    reached = pdrop[:2]
    assert all(r["visual_tokens_kept"] == none["visual_tokens_kept"] for r in reached)  # pruned inside the LLM
    assert reached[0]["layer_averaged_image_tokens"] > reached[1]["layer_averaged_image_tokens"]
    assert reached[0]["tflops"] > reached[1]["tflops"]


def test_bench_prefill_rejects_bad_input(capsys):
    assert main(["bench", "prefill", "--model", "tiny", "--compressors", "nope", "--repeats", "1"]) == 2
    error = capsys.readouterr().err
    assert "unknown nope" in error and "globalcom2" in error
    assert main(["bench", "prefill", "--model", "tiny", "--ratios", "0", "--repeats", "1"]) == 2
    assert "ratio=0.0 is out of range" in capsys.readouterr().err
    assert main(["bench", "prefill", "--model", "huge_one", "--repeats", "1"]) == 2
    error = capsys.readouterr().err
    assert "--model huge_one" in error and "cpu_small" in error
