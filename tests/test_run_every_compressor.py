"""Every compressor runs through the main path (run.py's recipe) on both tiny models."""

import pytest

from gc2bench.compressors.base import CLS_SCORES
from gc2bench.config import build_compressor, compose_run_config
from gc2bench.run import run

from conftest import REPO

COMPRESSORS = sorted(path.stem for path in (REPO / "conf" / "compressor").glob("*.yaml"))


@pytest.mark.parametrize("model", ["tiny", "tiny_onevision"])
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_compressor_runs_and_records(tmp_path, cache_dir, model, compressor):
    overrides = [f"model={model}", f"compressor={compressor}", "ratio=0.5", f"results_dir={tmp_path}", "suite.limit=2"]
    method = build_compressor(compose_run_config(overrides, check=False))
    if model == "tiny_onevision" and method.score_request.kind in CLS_SCORES:  # SigLIP has no CLS token
        overrides.append("compressor.score=cosine")
    cfg = compose_run_config(overrides, check=False)
    records = run(cfg)
    assert [r["task"] for r in records] == ["pope", "vqav2_val"]
    for record in records:
        assert record["status"] == "done" and record["efficiency"]["failed_samples"] == 0
        assert record["efficiency"]["samples"] == 2
        tokens = record["tokens"]
        if compressor == "none":
            assert tokens["visual_tokens_kept"]["mean"] == tokens["visual_tokens_before"]["mean"]
        in_llm = tokens["layer_averaged_image_tokens"]
        assert tokens["equivalent_image_tokens"]["mean"] == pytest.approx(
            (in_llm or tokens["visual_tokens_kept"])["mean"]
        )
        assert 0 < tokens["equivalent_share"]["mean"] <= 1.0 + 1e-9
        if method.kind == "llm":
            assert in_llm["mean"] < tokens["visual_tokens_kept"]["mean"]
            assert record["compressor"]["schedule"]["num_layers"] == 4
        elif compressor != "none":
            assert in_llm is None and tokens["visual_tokens_kept"]["mean"] < tokens["visual_tokens_before"]["mean"]
