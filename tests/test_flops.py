"""Analytic prefill FLOPs / KV cache against the papers' Tables V/VI, GQA, per-layer counts, bad input."""

import csv
import json

import pytest

from gc2bench.cli import main
from gc2bench.efficiency.flops import DecoderShape, decoder_shape, prefill_flops, sample_tflops, tokens_per_layer
from gc2bench.efficiency.presets import TEXT_PRESETS
from gc2bench.errors import ConfigError

from conftest import paper_table

PAPER_TABLE = paper_table("tcsvt_table5_6_efficiency.csv")  # raises at collection when missing: never skipped


def paper_rows():
    with PAPER_TABLE.open() as f:
        return list(csv.DictReader(f))


ROWS = paper_rows()


def test_the_table_covers_both_models_at_every_ratio():
    assert {(r["model"], float(r["ratio"])) for r in ROWS} == {
        (m, r) for m in ("llava_next_7b", "llava_next_13b") for r in (1.0, 0.75, 0.5, 0.25, 0.1)
    }


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-R{r['ratio']}")
def test_cli_reproduces_the_paper_row(row, capsys):
    assert main(["flops", "--model", row["model"], "--visual-tokens", row["visual_tokens_max"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text_tokens"] == 0
    assert report["tflops"] == pytest.approx(float(row["tflops"]), rel=0.005)
    assert report["kv_cache_mb"] == pytest.approx(float(row["kv_cache_mb"]), rel=0.05)


def test_mha_matches_the_paper_formula_exactly():
    shape = decoder_shape("llava_next_7b")
    d, m, layers, tokens = 4096, 11008, 32, 1234
    paper = layers * (8 * tokens * d**2 + 4 * tokens**2 * d + 6 * tokens * d * m)
    assert prefill_flops(shape, [tokens] * layers) == paper


def test_gqa_shrinks_only_the_kv_projections_and_the_cache():
    gqa = decoder_shape("llava_onevision_7b")
    assert (gqa.num_heads, gqa.num_kv_heads, gqa.head_dim) == (28, 4, 128)
    mha = DecoderShape(gqa.hidden_size, gqa.intermediate_size, gqa.num_layers, 28, 28, 128)
    d, m, T, L = 3584, 18944, 2880, 28
    paper = L * (8 * T * d**2 + 4 * T**2 * d + 6 * T * d * m)
    assert prefill_flops(mha, [T] * L) == paper
    kv_saving = L * 4 * T * d * (d - 4 * 128)  # k and v project to 4 heads x 128 instead of d
    assert prefill_flops(gqa, [T] * L) == paper - kv_saving
    ratio = sample_tflops(gqa, T)["kv_cache_mb"] / sample_tflops(mha, T)["kv_cache_mb"]
    assert ratio == pytest.approx(4 / 28)
    assert sample_tflops(gqa, T)["kv_cache_mb"] == pytest.approx(2 * L * T * 512 * 2 / 1e6)


def test_per_layer_counts_give_a_fastv_schedule_its_true_cost():
    shape = decoder_shape("llava_next_7b")
    visual, text, K, R = 2880, 40, 2, 0.25
    kept = round(R * visual)
    schedule = [visual] * K + [kept] * (shape.num_layers - K)
    pruned = sample_tflops(shape, visual, text, schedule)
    full = sample_tflops(shape, visual, text)
    early = sample_tflops(shape, kept, text)  # as if pruned before the LLM
    assert pruned["tflops"] == pytest.approx((K * full["tflops"] + (32 - K) * early["tflops"]) / 32)
    assert early["tflops"] < pruned["tflops"] < full["tflops"]
    assert pruned["kv_cache_mb"] == pytest.approx(2 * 2 * 4096 * (K * (visual + text) + 30 * (kept + text)) / 1e6)
    assert tokens_per_layer(shape, visual, text, schedule)[:3] == [visual + text] * 2 + [kept + text]


def test_text_tokens_are_added_to_every_layer():
    with_text = sample_tflops("llava_next_7b", 576, 64)
    assert with_text == sample_tflops("llava_next_7b", 640, 0)


def test_a_config_directory_and_a_multimodal_config(tmp_path):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaNextConfig

    preset = dict(TEXT_PRESETS["llava_next_13b"])
    text = AutoConfig.for_model(preset.pop("model_type"), **preset)
    LlavaNextConfig(vision_config=CLIPVisionConfig(), text_config=text).save_pretrained(tmp_path)
    assert sample_tflops(str(tmp_path), 2880) == sample_tflops("llava_next_13b", 2880)
    assert decoder_shape(LlavaNextConfig(text_config=text)).num_layers == 40


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"visual_tokens": -1}, "visual_tokens=-1"),
        ({"visual_tokens": 10, "text_tokens": -5}, "text_tokens=-5"),
        ({"visual_tokens": 2.5}, "visual_tokens=2.5"),
        ({"visual_tokens": 0, "image_tokens_per_layer": [1] * 31}, "31 entries but the model has 32 layers"),
        ({"visual_tokens": 0, "image_tokens_per_layer": [1] * 31 + [-2]}, "image_tokens_per_layer[31]=-2"),
    ],
)
def test_bad_token_counts_name_the_value(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        sample_tflops("llava_next_7b", **kwargs)


def test_unknown_model_names_the_value_and_lists_the_presets(capsys):
    assert main(["flops", "--model", "llava_next_70b", "--visual-tokens", "2880"]) == 2
    error = capsys.readouterr().err
    assert "model=llava_next_70b" in error
    for name in ("llava_next_7b", "llava_next_13b", "llava_onevision_7b"):
        assert name in error
    assert main(["flops", "--model", "llava_next_7b", "--visual-tokens", "-1"]) == 2
    assert "visual_tokens=-1" in capsys.readouterr().err


def test_text_output(capsys):
    assert main(["flops", "--model", "llava_next_7b", "--visual-tokens", "288"]) == 0
    out = capsys.readouterr().out
    assert "3.77 TFLOPs" in out and "151.0 MB" in out
