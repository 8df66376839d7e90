"""`gc2bench bench prefill` smoke run on the tiny preset: row structure and monotone tokens / TFLOPs."""

import json

from gc2bench.cli import main

FIELDS = {
    "method",
    "ratio",
    "status",
    "visual_tokens_before",
    "visual_tokens_kept",
    "layer_averaged_image_tokens",
    "text_tokens",
    "tflops",
    "kv_cache_mb",
    "prefill_ms",
    "compression_ms",
    "vision_ms",
    "speedup",
    "analytic_speedup",
    "share_of_limit",
    "overhead_pct",
    "prefill_cpu_ms",
    "cpu_speedup",
    "setup",
}


def test_bench_prefill_json_rows(capsys, cache_dir):
    code = main(
        [
            "bench",
            "prefill",
            "--model",
            "tiny",
            "--compressors",
            "globalcom2,pdrop",
            "--ratios",
            "1,0.5,0.1",
            "--repeats",
            "1",
            "--json",
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["ratio"]) for r in rows] == [("none", 1.0)] + [
        (m, r) for m in ("globalcom2", "pdrop") for r in (1.0, 0.5, 0.1)
    ]
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


ONEVISION_METHODS = [("none", 1.0)] + [(m, r) for m in ("globalcom2", "fastervlm", "fastv") for r in (1.0, 0.5)]


def test_tiny_onevision_preset_mirrors_the_tiny_onevision_builder():
    from gc2bench.efficiency.presets import LLAVA_ONEVISION_PRESETS, TEXT_PRESETS
    from gc2bench.models.tiny_onevision import TINY_ONEVISION_SPEC

    preset, spec = LLAVA_ONEVISION_PRESETS["tiny_onevision"], TINY_ONEVISION_SPEC
    for key in ("crop_size", "patch_size", "grid_pinpoints", "vision_aspect_ratio", "vision"):
        assert preset[key] == spec[key], key
    text = TEXT_PRESETS[preset["text"]]
    assert text["model_type"] == "qwen2"
    assert {key: text[key] for key in spec["text"]} == spec["text"]


def test_bench_prefill_onevision_rows_match_the_real_adapter(capsys, cache_dir, tmp_path):
    """tiny_onevision (SigLIP, Qwen2 with GQA): every row's kept tokens are what the same compressor keeps
    through the real LlavaOneVisionAdapter on the bench's weights and image; TFLOPs are sample_tflops of them."""
    import dataclasses

    import pytest

    from gc2bench.bench.prefill import PROMPT, RandomWeightsOneVisionAdapter, bench_model_dir, synthetic_images
    from gc2bench.compressors.none import NoCompression
    from gc2bench.config import build_compressor, compose_run_config
    from gc2bench.efficiency.flops import DecoderShape, sample_tflops
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    code = main(
        [
            "bench",
            "prefill",
            "--model",
            "tiny_onevision",
            "--compressors",
            "none,globalcom2,fastervlm,fastv",
            "--ratios",
            "1,0.5",
            "--repeats",
            "1",
            "--json",
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["ratio"]) for r in rows] == ONEVISION_METHODS
    assert all(r["status"] == "ok" and FIELDS <= set(r) for r in rows)
    setup = rows[0]["setup"]
    assert setup["architecture"] == "llava_onevision" and setup["vision"]["model_type"] == "siglip_vision_model"
    assert (setup["llm"]["num_heads"], setup["llm"]["num_kv_heads"]) == (4, 2)
    assert setup["image_size"] == [168, 168]  # 3×3 crops: 16 + 144 + 12 newlines
    none = rows[0]
    assert none["visual_tokens_kept"] == 172
    assert none["speedup"] == 1 and none["analytic_speedup"] == 1 and none["share_of_limit"] == 1
    for row in rows:  # SigLIP has no CLS: CLS-score compressors run on cosine scores, and say so
        cosine = "compressor.score=cosine" in row["overrides"]
        assert cosine == (row["method"] in ("globalcom2", "fastervlm")), row
    assert rows[2]["visual_tokens_kept"] < rows[1]["visual_tokens_kept"] <= 172  # globalcom2 0.5 < 1
    assert rows[6]["layer_averaged_image_tokens"] < rows[5]["layer_averaged_image_tokens"] == 172  # fastv

    bench = RandomWeightsOneVisionAdapter(
        str(bench_model_dir("tiny_onevision")), NoCompression(), dtype="float32", device="cpu"
    )
    bench.model.save_pretrained(tmp_path)
    bench.processor.save_pretrained(tmp_path)
    image = synthetic_images(1, tuple(setup["image_size"]), seed=0)[0]
    shape = DecoderShape.from_config(bench.config)
    as_mha = dataclasses.replace(shape, num_kv_heads=shape.num_heads)
    for row in rows:
        overrides = [f"compressor={row['method']}", f"ratio={row['ratio']}"]
        if row["method"] in ("globalcom2", "fastervlm"):
            overrides.append("compressor.score=cosine")
        compressor = build_compressor(compose_run_config(overrides, check=False))
        real = LlavaOneVisionAdapter(str(tmp_path), compressor, name="real", dtype="float32", device="cpu")
        stats = real.generate([PROMPT], [[image]], max_new_tokens=1, do_sample=False)[0].stats
        text = stats.llm_input_tokens - stats.visual_tokens_kept
        assert (row["visual_tokens_kept"], row["text_tokens"]) == (stats.visual_tokens_kept, text), row
        assert row["layer_averaged_image_tokens"] == stats.layer_averaged_image_tokens, row
        expected = sample_tflops(real.config, stats.visual_tokens_kept, text, stats.image_tokens_per_layer)
        assert row["tflops"] == pytest.approx(expected["tflops"], rel=1e-12)
        assert row["kv_cache_mb"] == pytest.approx(expected["kv_cache_mb"], rel=1e-12)
        mha = sample_tflops(as_mha, stats.visual_tokens_kept, text, stats.image_tokens_per_layer)
        assert row["tflops"] < mha["tflops"] and row["kv_cache_mb"] == pytest.approx(mha["kv_cache_mb"] / 2)
        assert row["analytic_speedup"] == pytest.approx(none["tflops"] / expected["tflops"])

    # A directory holding a OneVision config.json is accepted; the model type picks the OneVision adapter.
    assert (
        main(["bench", "prefill", "--model", str(tmp_path), "--compressors", "none", "--repeats", "1", "--json"]) == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert row["setup"]["architecture"] == "llava_onevision" and row["visual_tokens_kept"] == 172


def test_onevision_cls_compressor_without_the_cosine_override_is_unsupported(cache_dir):
    from gc2bench.bench.prefill import (
        RandomWeightsOneVisionAdapter,
        bench_model_dir,
        check_supported,
        compose_compressor,
    )
    from gc2bench.compressors.none import NoCompression

    adapter = RandomWeightsOneVisionAdapter(
        str(bench_model_dir("tiny_onevision")), NoCompression(), name="tiny_onevision", dtype="float32", device="cpu"
    )
    method = check_supported(compose_compressor("globalcom2", 0.5, 4, vision_has_cls=True), adapter)
    assert method.status == "unsupported" and method.compressor is None
    assert "compressor.score=cosine" in method.reason
    method = check_supported(compose_compressor("globalcom2", 0.5, 4, vision_has_cls=False), adapter)
    assert method.status == "ok" and method.overrides == ["compressor.score=cosine"]
