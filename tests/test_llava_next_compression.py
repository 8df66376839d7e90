"""Vision-stage compression inside transformers' LLaVA-NeXT (tiny model, CPU)."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gc2bench.compressors.base import ScoreRequest
from gc2bench.compressors.fastervlm import FasterVLM
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.random import RandomKeep
from gc2bench.layout import NEWLINE
from gc2bench.models.adapter import to_rgb

SIZES = [(80, 120), (60, 200), (160, 64), (40, 40), (300, 300), (1, 1), (1, 400), (400, 1), (57, 113)]


def picture(height, width, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture
def adapter(tiny_adapter):
    original = tiny_adapter.compressor
    yield tiny_adapter
    tiny_adapter.compressor = original


def answers(adapter, compressor, texts, images, max_new_tokens=5):
    adapter.compressor = compressor
    return adapter.generate(texts, images, max_new_tokens=max_new_tokens, do_sample=False)


def pixels_of(adapter, image):
    inputs = adapter.processor(images=[image], text=[adapter.prompt("x", 1)], return_tensors="pt")
    layout = adapter.layout(inputs["image_sizes"][0].tolist())
    return inputs["pixel_values"][0, : layout.num_views]


@pytest.mark.parametrize("kind, layer", [("cls_softmax", -1), ("cls_softmax", -2), ("cls_logit", -1)])
def test_hooked_cls_attention_equals_eager_attentions(adapter, kind, layer):
    pixels = pixels_of(adapter, picture(80, 120, 0))
    _, scores = adapter.encode_views(pixels, ScoreRequest(kind, layer))
    tower = adapter.model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        tower.set_attn_implementation("sdpa")
    attention = out.attentions[layer]  # [V, heads, 1+N, 1+N], post-softmax
    if kind == "cls_softmax":
        expected = attention[:, :, 0, 1:].mean(1)
    else:  # log-softmax differs from the logits by each head's logsumexp: compare per-head softmax instead
        expected = attention[:, :, 0, 1:].mean(1)
        attn = adapter._vision_layer(layer).self_attn
        x = adapter._vision_layer(layer).layer_norm1(out.hidden_states[layer - 1 if layer < 0 else layer])
        heads = attn.num_heads
        q = attn.q_proj(x[:, :1]).view(len(x), 1, heads, -1).transpose(1, 2)
        k = attn.k_proj(x).view(len(x), x.shape[1], heads, -1).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).squeeze(-2) * attn.scale
        torch.testing.assert_close(logits.softmax(-1)[..., 1:].mean(1), expected, rtol=0, atol=1e-6)
        expected = logits[..., 1:].mean(1)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["norm", "cosine"])
def test_feature_scores_come_from_the_projector_inputs(adapter, kind):
    """``norm`` (‖x_i‖₂) and ``cosine`` (−cos to the view mean) of the projector inputs x, CLS dropped."""
    pixels = pixels_of(adapter, picture(80, 120, 0))
    _, scores = adapter.encode_views(pixels, ScoreRequest(kind, -1))
    with torch.no_grad():
        hidden = adapter.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    x = hidden[adapter.config.vision_feature_layer][:, 1:]
    if kind == "norm":
        expected = (x * x).sum(-1).sqrt()
    else:
        expected = -(x @ x.mean(1, keepdim=True).transpose(1, 2))[..., 0] / (
            x.norm(dim=-1) * x.mean(1).norm(dim=-1)[:, None]
        )
    assert scores.shape == x.shape[:2] and scores.dtype == torch.float32 and scores.std() > 0
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_globalcom2_at_full_ratio_in_transformers_geometry_equals_none(adapter):
    texts = ["Is there a cat?", "What color?", "How many?"]
    images = [[picture(80, 120, 1)], [picture(60, 200, 2)], [picture(300, 300, 3)]]
    spatial = GlobalCom2(
        1.0,
        thumbnail_order="spatial",
        allocation="uniform",
        newlines="unpadded",
        unpad="transformers",
        crop_layout="spatial",
    )
    expected = answers(adapter, NoCompression(), texts, images)
    got = answers(adapter, spatial, texts, images)
    assert [g.text for g in got] == [e.text for e in expected]
    assert [g.stats.visual_tokens_kept for g in got] == [e.stats.visual_tokens_kept for e in expected]


def test_globalcom2_at_full_ratio_with_only_spatial_thumbnail_still_differs_from_none(adapter):
    """Documented departure from the issue's literal equivalence: the authors' defaults (softmax
    budgets clipped at 1, one newline per padded row, int() unpadding) change the token set at R = 1."""
    image = [[picture(60, 200, 2)]]
    got = answers(adapter, GlobalCom2(1.0, thumbnail_order="spatial"), ["x"], image, 1)[0].stats
    none = answers(adapter, NoCompression(), ["x"], image, 1)[0].stats
    assert (got.visual_tokens_kept, got.newline_tokens_kept) != (none.visual_tokens_kept, none.newline_tokens_kept)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GlobalCom2(0.25),
        lambda: FasterVLM(0.25),
        lambda: RandomKeep(0.25, seed=1),
        lambda: GlobalCom2(0.5, score="cls_softmax"),
    ],
)
def test_a_batch_equals_one_at_a_time(adapter, make):
    texts = ["Is there a cat?", "What color?", "How many?", "Two images?"]
    images = [
        [picture(80, 120, 4)],
        [picture(60, 200, 5)],
        [picture(300, 300, 6)],
        [picture(50, 90, 7), picture(130, 40, 8)],
    ]
    batched = answers(adapter, make(), texts, images)
    single_compressor = make()
    single = [answers(adapter, single_compressor, [t], [i])[0] for t, i in zip(texts, images)]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.stats.kept_per_view for b in batched] == [s.stats.kept_per_view for s in single]
    assert [b.stats.visual_tokens_kept for b in batched] == [s.stats.visual_tokens_kept for s in single]


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_globalcom2_kept_counts_follow_layout_and_budgets(adapter, ratio):
    images = [[picture(h, w, i)] for i, (h, w) in enumerate(SIZES)]
    results = answers(adapter, GlobalCom2(ratio), ["x"] * len(images), images, 1)
    for result, (image,) in zip(results, images):
        stats = result.stats
        layout = adapter.layout((image.height, image.width))
        n_tok = layout.tokens_per_view
        top, bottom, left, right = layout.unpadded_region("llava")
        region = layout.grid_sources()[top:bottom, left:right].flatten()
        crop_counts = torch.bincount(region // n_tok - 1, minlength=layout.num_crops).tolist()
        budgets = stats.crop_budgets[0]
        expected_crops = [math.floor(n * r) for n, r in zip(crop_counts, budgets)]
        assert stats.kept_per_view[0] == [math.floor(n_tok * ratio)] + expected_crops
        assert stats.newline_tokens_kept == layout.padded_size[0]  # authors: one per padded row
        assert stats.visual_tokens_kept == sum(stats.kept_per_view[0]) + stats.newline_tokens_kept
        assert stats.visual_tokens_before == len(layout.packed_sources)


def test_fastervlm_and_random_counts_in_the_model(adapter):
    images = [[picture(h, w, i)] for i, (h, w) in enumerate(SIZES)]
    for compressor in (FasterVLM(0.5), RandomKeep(0.5)):
        for result, (image,) in zip(answers(adapter, compressor, ["x"] * len(images), images, 1), images):
            layout = adapter.layout((image.height, image.width))
            packed = layout.packed_sources
            per_view = torch.bincount(packed[packed >= 0] // layout.tokens_per_view, minlength=layout.num_views)
            assert result.stats.kept_per_view[0] == [round(0.5 * int(n)) for n in per_view]
            assert result.stats.newline_tokens_kept == int((packed == NEWLINE).sum())


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "I", "F", "LA", "1"])
def test_any_image_mode_is_answered(adapter, mode):
    base = picture(70, 90, 9)
    image = {
        "I;16": lambda: Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257),
        "I": lambda: base.convert("I"),
        "F": lambda: base.convert("F"),
    }.get(mode, lambda: base.convert(mode))()
    assert to_rgb(image).mode == "RGB"
    result = answers(adapter, GlobalCom2(0.25), ["x"], [[image]], 2)[0]
    assert result.stats.visual_tokens_kept > 0


def test_sixteen_bit_images_are_scaled_not_clipped():
    image = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert list(np.asarray(to_rgb(image))[0, :, 0]) == [0, 128, 255]
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    assert list(np.asarray(to_rgb(rgba))[0, 0]) == [255, 255, 255]


def test_unreadable_image_bytes_fail_that_sample_only(tiny_adapter, cache_dir, tmp_path):
    import datasets

    from gc2bench.evaluation.fixtures import _pope_rows
    from gc2bench.evaluation.lmms_model import GC2BenchLMM
    from gc2bench.evaluation.suite import evaluate_task, use_offline_hub

    rows = _pope_rows()
    buffer = io.BytesIO()
    rows[0]["image"].save(buffer, format="PNG")
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    columns["image"] = [{"bytes": buffer.getvalue(), "path": None} for _ in rows]
    columns["image"][2] = {"bytes": b"these bytes are not an image", "path": None}
    features = datasets.Dataset.from_dict({k: v for k, v in columns.items() if k != "image"}).features
    features["image"] = datasets.Image()
    path = tmp_path / "pope_broken.parquet"
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(path))

    use_offline_hub()
    entry = {"task": "pope", "data_files": str(path), "split": "test", "metric": "pope_accuracy", "scale": 100}
    result = evaluate_task(GC2BenchLMM(tiny_adapter, batch_size=2), entry)
    assert [f["doc_id"] for f in result.failures] == [2]
    assert "UnidentifiedImageError" in result.failures[0]["error"]
    assert [s["doc_id"] for s in result.samples] == [0, 1, 3, 4]
