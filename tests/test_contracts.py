"""Every compressor config builds a compressor that satisfies the contract its adapter reads."""

from __future__ import annotations

import pytest

from gc2bench.compressors.base import LLMStageCompressor, ScoreKind, ScoreRequest, VisionStageCompressor
from gc2bench.compressors.none import NoCompression
from gc2bench.config import ConfigError, build_compressor, compose_run_config, config_names
from gc2bench.layout import UNPAD_ARITHMETIC


@pytest.fixture(scope="module", params=config_names("compressor"))
def compressor(request):
    return build_compressor(compose_run_config([f"compressor={request.param}", "ratio=0.5"]))


def test_every_compressor_satisfies_its_protocol(compressor):
    assert isinstance(compressor, VisionStageCompressor)
    assert compressor.kind in ("vision", "llm")
    assert isinstance(compressor, LLMStageCompressor) == (compressor.kind == "llm")
    assert isinstance(compressor.name, str) and compressor.name
    assert isinstance(compressor.score_request, ScoreRequest)
    assert isinstance(compressor.ratio, float) and 0.0 < compressor.ratio <= 1.0
    assert isinstance(compressor.seed, int) and not isinstance(compressor.seed, bool)
    assert isinstance(compressor.unpad, bool) or compressor.unpad in UNPAD_ARITHMETIC
    params = compressor.params()
    assert isinstance(compressor.convention, str) and compressor.convention == params["convention"]
    assert "ratio" in params


def test_llm_stage_attributes():
    built = [
        build_compressor(compose_run_config([f"compressor={name}", "ratio=0.5"])) for name in config_names("compressor")
    ]
    llm_stage = [compressor for compressor in built if compressor.kind == "llm"]
    assert len(llm_stage) >= 5  # fastv, pdrop, sparsevlm and the two "+GlobalCom²"
    for compressor in llm_stage:
        assert compressor.positions in ("keep", "compact"), compressor.name
        assert compressor.decode in ("reselect", "static"), compressor.name
        assert isinstance(compressor.wants_query_attention, bool), compressor.name
        stages = compressor.stages(32)
        assert stages and [s.score_layer for s in stages] == sorted(s.score_layer for s in stages), compressor.name
        assert compressor.schedule_info(32)["num_layers"] == 32, compressor.name


def test_a_compressor_missing_an_attribute_is_refused():
    class NoSeed:
        name, kind, score_request, ratio, unpad, convention = "x", "vision", ScoreRequest(), 1.0, True, ""

        def params(self):
            return {}

        def select(self, scores, layouts):
            return None

    assert not isinstance(NoSeed(), VisionStageCompressor)
    assert isinstance(NoCompression(), VisionStageCompressor) and not isinstance(NoCompression(), LLMStageCompressor)


def test_score_kinds_are_one_enumerated_set():
    assert [str(k) for k in ScoreKind] == [
        "none",
        "cls_logit",
        "cls_softmax",
        "cls_softmax_fullwidth",
        "cosine",
        "norm",
    ]
    assert ScoreRequest("norm", -2).kind is ScoreKind.NORM
    with pytest.raises(
        ConfigError,
        match="kind='cosin' is not one of none, cls_logit, cls_softmax, cls_softmax_fullwidth, cosine, norm",
    ):
        ScoreRequest("cosin")


def test_each_adapter_declares_the_kinds_it_serves():
    from gc2bench.models.llava_next import LlavaNextAdapter
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    assert LlavaNextAdapter.score_kinds == set(ScoreKind)
    assert LlavaOneVisionAdapter.score_kinds == {ScoreKind.NONE, ScoreKind.COSINE, ScoreKind.NORM}
