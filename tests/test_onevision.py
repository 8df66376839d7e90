"""LLaVA-OneVision: tiny model, packing vs transformers' own code, compressor=none ≡ plain generate,
GlobalCom² with the cosine score on the (anyres_max_9-downsampled) packed grid, CLS requests refused."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gc2bench.compressors.base import ScoreRequest
from gc2bench.compressors.fastervlm import FasterVLM
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.random import RandomKeep
from gc2bench.config import ConfigError
from gc2bench.layout import NEWLINE, OneVisionLayout, onevision_layout
from gc2bench.models.adapter import SampleStats

from conftest import ODD_IMAGE_SIZES

MAX_NEW = 6
SPATIAL_R1 = {"ratio": 1.0, "allocation": "uniform", "thumbnail_order": "spatial", "score": "cosine"}


def image(width, height, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def ov_path(cache_dir):
    from gc2bench.models.tiny_onevision import tiny_onevision_path

    return tiny_onevision_path(seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def ov_adapter(ov_path):
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    return LlavaOneVisionAdapter(str(ov_path), NoCompression(), name="tiny_onevision", dtype="float32", device="cpu")


@pytest.fixture
def with_compressor(ov_adapter):
    """Swap the adapter's compressor for one test."""
    original = ov_adapter.compressor

    def use(compressor):
        ov_adapter.compressor = compressor
        return ov_adapter

    yield use
    ov_adapter.compressor = original


@pytest.fixture(scope="session")
def real_size_model():
    """A LlavaOnevisionModel with the 7B checkpoint's geometry (384-px crops, 27×27 patches, 36 pinpoints)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionModel

    tiny = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14, **tiny},
        text_config={"model_type": "qwen2", "vocab_size": 16, "num_key_value_heads": 1, **tiny},
    )
    return LlavaOnevisionModel(config).eval()


def tiny_layout(size):
    """The tiny OneVision's layout of an image (height, width), without loading the model."""
    from gc2bench.layout import select_grid
    from gc2bench.models.tiny_onevision import TINY_ONEVISION_SPEC as spec

    crop = spec["crop_size"]
    return OneVisionLayout(size, select_grid(size, spec["grid_pinpoints"], crop), crop // spec["patch_size"], crop)


def _sizes(count, seed):
    sizes = [
        *ODD_IMAGE_SIZES,
        (300, 300),
        (170, 200),
        (55, 176),
        (2304, 2304),
    ]
    rng = random.Random(seed)
    return sizes + [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(count)]


# ----------------------------------------------------------------------------- (a) the tiny model


def test_tiny_onevision_round_trip_is_exact_and_deterministic(tmp_path, ov_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    from gc2bench.models.tiny_onevision import build_tiny_onevision

    def state(path):
        return LlavaOnevisionForConditionalGeneration.from_pretrained(path).state_dict()

    first, again = state(ov_path), state(build_tiny_onevision(tmp_path / "again", seed=0))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = state(build_tiny_onevision(tmp_path / "seed1", seed=1))
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_tiny_onevision_has_the_onevision_structure(ov_adapter):
    config = ov_adapter.config
    assert (config.model_type, config.vision_config.model_type, config.text_config.model_type) == (
        "llava_onevision",
        "siglip_vision_model",
        "qwen2",
    )
    assert config.text_config.num_attention_heads == 4 and config.text_config.num_key_value_heads == 2
    assert (config.vision_feature_layer, config.vision_feature_select_strategy, config.vision_aspect_ratio) == (
        -1,
        "full",
        "anyres_max_9",
    )
    assert max(max(p) for p in config.image_grid_pinpoints) == 6 * config.vision_config.image_size
    processor = ov_adapter.processor
    assert processor.num_image_tokens == 16 and processor.vision_feature_select_strategy == "full"
    ids = processor.tokenizer("Is there a cat? yes", add_special_tokens=False).input_ids
    assert processor.tokenizer.decode(ids) == "Is there a cat? yes"
    assert ov_adapter.prompt("Hi", 1).startswith("<|im_start|>user <image>\nHi<|im_end|>")


# ----------------------------------------------------------------------------- (c) layout vs transformers


def _pack_coordinates(model, layout):
    """transformers' pack_image_features on features (source id, crop-grid row, crop-grid col) → [P, 3] float64."""
    n_tok, pps = layout.tokens_per_view, layout.patches_per_side
    source = torch.arange(layout.num_views * n_tok, dtype=torch.float64)
    view, patch = source // n_tok, source % n_tok
    crop = (view - 1).clamp(min=0)
    cols = max(layout.grid[1], 1)
    row = (crop // cols) * pps + patch // pps
    col = (crop % cols) * pps + patch % pps
    features = torch.stack([source, row, col], dim=-1).view(layout.num_views, n_tok, 3)
    packed, lengths = model.pack_image_features(
        [features],
        torch.tensor([layout.image_size]),
        image_newline=torch.full((3,), float(NEWLINE), dtype=torch.float64),
    )
    assert int(lengths[0]) == packed[0].shape[0]
    return packed[0]


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_packed_sources_reproduce_transformers_packing(which, ov_adapter, real_size_model):
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

    model = ov_adapter.model.model if which == "tiny" else real_size_model
    config = model.config
    downsampled = 0
    for size in _sizes(120 if which == "tiny" else 40, seed=len(which)):
        layout = onevision_layout(config, size)
        assert layout.grid == tuple(
            get_anyres_image_grid_shape(list(size), config.image_grid_pinpoints, config.vision_config.image_size)
        ), size
        packed = _pack_coordinates(model, layout)
        sources = layout.packed_sources
        assert packed.shape[0] == len(sources), size
        is_newline = packed[:, 0] == NEWLINE
        assert torch.equal(is_newline, sources == NEWLINE), size
        if not layout.downsampled:
            assert torch.equal(packed[:, 0].long(), sources), size
            continue
        downsampled += 1
        n_tok, pps, cols = layout.tokens_per_view, layout.patches_per_side, layout.grid[1]
        assert torch.equal(packed[:n_tok, 0].long(), sources[:n_tok])
        grid = sources[n_tok:][~is_newline[n_tok:]]
        view, patch = grid // n_tok, grid % n_tok
        row = ((view - 1) // cols) * pps + patch // pps
        col = ((view - 1) % cols) * pps + patch % pps
        sampled = packed[n_tok:][~is_newline[n_tok:]]
        # The attributed patch is the bilinear neighbour nearest to the token's sampling point.
        assert ((row - sampled[:, 1]).abs() <= 0.5 + 1e-9).all(), size
        assert ((col - sampled[:, 2]).abs() <= 0.5 + 1e-9).all(), size
    assert downsampled > 5


def test_processor_counts_the_packed_tokens(ov_adapter):
    processor = ov_adapter.processor
    for height, width in _sizes(40, seed=3):
        layout = ov_adapter.layout((height, width))
        assert layout == tiny_layout((height, width))
        count = processor._get_number_of_features(height, width, 56, 56)
        assert count == len(layout.packed_sources), (height, width)


def test_virtual_crop_views_hold_each_packed_token_once():
    for size in _sizes(60, seed=4):
        layout = tiny_layout(size)
        grid = layout.packed_grid_sources.flatten()
        assert len(set(grid.tolist())) == grid.numel()
        assert (grid >= layout.tokens_per_view).all() and (grid < layout.num_views * layout.tokens_per_view).all()
        rows = layout.source_rows
        assert torch.equal(rows[grid], layout.tokens_per_view + torch.arange(grid.numel()))
        assert int((rows >= 0).sum()) == layout.tokens_per_view + grid.numel()


def test_base_only_layout_and_bad_geometry():
    base = OneVisionLayout((30, 70), (0, 0), 4, 56)
    assert base.num_views == 1 and base.packed_sources.tolist() == list(range(16)) + [NEWLINE]
    with pytest.raises(ValueError, match="grid"):
        OneVisionLayout((30, 70), (0, 2), 4)
    with pytest.raises(ValueError, match="image_size"):
        OneVisionLayout((0, 70), (1, 1), 4)
    from gc2bench.layout import parse_anyres_max

    assert parse_anyres_max("anyres_max_9") == 9
    with pytest.raises(ValueError, match="anyres_max"):
        parse_anyres_max("anyres")


# ----------------------------------------------------------------------------- (b) none ≡ plain generate


def plain_generate(adapter, texts, images):
    """transformers alone, images nested per prompt (OneVision's multi-image convention)."""
    prompts = [adapter.prompt(t, len(imgs)) for t, imgs in zip(texts, images)]
    nested = [imgs for imgs in images if imgs]
    inputs = adapter.processor(images=nested or None, text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = adapter.model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    placeholders = (inputs["input_ids"] == adapter.image_token_id).sum(1).tolist()
    answers = adapter.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers, placeholders


CASES = {
    "one image": (["Is there a cat?"], [[image(120, 80, 0)]]),
    "downsampled": (["Is there a cat?"], [[image(300, 300, 6)]]),
    "batch of sizes": (
        ["Is there a cat?", "What color is it?", "How many?", "Say yes."],
        [[image(300, 300, 1)], [image(40, 200, 2)], [image(200, 170, 3)], []],
    ),
    "two images in one prompt": (["Compare them."], [[image(90, 60, 4), image(260, 250, 5)]]),
    "text only": (["Say yes."], [[]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_compression_matches_plain_generate(ov_adapter, case):
    texts, images = CASES[case]
    expected, placeholders = plain_generate(ov_adapter, texts, images)
    results = ov_adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)
    assert [r.text for r in results] == [answer.strip() for answer in expected]
    assert [r.stats.visual_tokens_kept for r in results] == placeholders
    assert any(expected)


def _features_and_logits(adapter, texts, images, nested=False):
    prompts = [adapter.prompt(t, len(imgs)) for t, imgs in zip(texts, images)]
    visual = [imgs for imgs in images if imgs] if nested else [img for imgs in images for img in imgs]
    inputs = adapter.processor(images=visual, text=prompts, padding=True, return_tensors="pt")
    model = adapter.model
    with torch.no_grad():
        reference = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        ).pooler_output
        expected_logits = model(**inputs).logits
        layouts = adapter.layouts(inputs)
        flat = torch.cat([pv[: layout.num_views] for pv, layout in zip(inputs["pixel_values"], layouts)])
        features, _ = adapter.encode_views(flat, ScoreRequest("none"))
        per_image = features.split([layout.num_views for layout in layouts])
        packed = [adapter.pack(f, layout.packed_sources, layout) for f, layout in zip(per_image, layouts)]
    return inputs, reference, packed, expected_logits, layouts


def test_no_compression_feeds_exactly_transformers_features_and_logits(ov_adapter):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    texts, images = CASES["batch of sizes"]
    inputs, reference, packed, expected_logits, layouts = _features_and_logits(ov_adapter, texts, images)
    assert any(layout.downsampled for layout in layouts)
    assert len(packed) == len(reference)
    for got, want in zip(packed, reference):
        assert torch.equal(got, want)
    stats = [SampleStats() for _ in texts]
    with torch.no_grad():
        ids, mask, features = ov_adapter._compress(inputs, images, stats)
        logits = ov_adapter.model(
            input_ids=ids,
            attention_mask=mask,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
        ).logits
    assert torch.equal(ids, inputs["input_ids"])
    assert torch.equal(logits[mask.bool()], expected_logits[inputs["attention_mask"].bool()])


def test_multi_image_prompts_pack_base_views_like_transformers(ov_adapter):
    """Nested image lists: transformers gives each image of a several-image prompt its base view only."""
    texts = ["Compare them.", "Is there a cat?"]
    images = [[image(90, 60, 4), image(260, 250, 5)], [image(300, 300, 7)]]
    inputs, reference, packed, _, layouts = _features_and_logits(ov_adapter, texts, images, nested=True)
    assert [layout.num_views for layout in layouts] == [1, 1, 37]
    placeholders = int((inputs["input_ids"] == ov_adapter.image_token_id).sum())
    assert placeholders == sum(len(layout.packed_sources) for layout in layouts)
    for got, want in zip(packed, reference):
        assert torch.equal(got, want)


def test_token_accounting_follows_the_packed_grid(ov_adapter):
    texts, images = CASES["batch of sizes"]
    results = ov_adapter.generate(texts[:3], images[:3], max_new_tokens=1, do_sample=False)
    for result, imgs in zip(results, images):
        layout = ov_adapter.layout((imgs[0].height, imgs[0].width))
        stats = result.stats
        assert stats.visual_tokens_before == stats.visual_tokens_kept == len(layout.packed_sources)
        assert stats.newline_tokens_kept == layout.packed_size[0]
        views = layout.packed_sources[layout.packed_sources >= 0] // layout.tokens_per_view
        assert stats.kept_per_view[0] == torch.bincount(views, minlength=layout.num_views).tolist()


# ----------------------------------------------------------------------------- (d) GlobalCom² on OneVision


def _expected_count(layout, selection, b, ratio):
    n_tok = layout.tokens_per_view
    views = layout.packed_sources[layout.packed_sources >= 0] // n_tok
    token_counts = torch.bincount(views, minlength=layout.num_views)[1:]
    budgets = selection.crop_budgets[b, : layout.num_crops]
    crops = sum(math.floor(n * r) for n, r in zip(token_counts.tolist(), budgets.tolist()))
    return math.floor(n_tok * ratio) + crops + int((layout.packed_sources == NEWLINE).sum()), token_counts


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_globalcom2_kept_counts_follow_layout_and_budgets(ratio):
    sizes = _sizes(30, seed=5)
    layouts = [tiny_layout(size) for size in sizes] + [OneVisionLayout((40, 90), (0, 0), 4, 56)]
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(layout.num_views, 16, generator=generator) * 2 - 1 for layout in layouts]
    compressor = GlobalCom2(ratio=ratio, score="cosine")
    selection = compressor.select(scores, layouts)
    for b, (layout, sources) in enumerate(zip(layouts, selection.per_image())):
        expected, token_counts = _expected_count(layout, selection, b, ratio)
        assert len(sources) == expected, layout.image_size
        assert set(sources.tolist()) <= set(layout.packed_sources.tolist())
        crop_part = sources[selection.info["thumbnail_keep_count"] :]
        packed_tail = layout.packed_sources[16:]
        position = {s: i for i, s in enumerate(packed_tail.tolist()) if s >= 0}
        order = [position[s] for s in crop_part.tolist() if s >= 0]
        assert order == sorted(order)
        kept = torch.bincount(crop_part[crop_part >= 0] // 16, minlength=layout.num_views)[1:]
        budgets = selection.crop_budgets[b, : layout.num_crops].tolist()
        assert kept.tolist() == [math.floor(n * r) for n, r in zip(token_counts.tolist(), budgets)]
    single = compressor.select(scores[14:15], layouts[14:15]).per_image()[0]
    assert torch.equal(single, selection.per_image()[14])


def test_globalcom2_ranks_crop_tokens_on_the_downsampled_grid():
    layout = tiny_layout((300, 300))
    assert layout.downsampled and layout.packed_size == (12, 12)
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(layout.num_views, 16, generator=generator)
    thumb = scores[0].view(1, 1, 4, 4)
    global_map = F.interpolate(thumb, size=layout.packed_size, mode="bilinear", align_corners=False).flatten()
    top, bottom, left, right = layout.unpadded_region()
    local_unpadded = scores.flatten()[layout.grid_sources()[top:bottom, left:right]]
    local_map = F.interpolate(
        local_unpadded[None, None], size=layout.packed_size, mode="bilinear", align_corners=False
    ).flatten()
    grid = layout.packed_grid_sources.flatten()
    for token_score, values in (("global", global_map), ("local", local_map)):
        selection = GlobalCom2(ratio=0.5, score="cosine", allocation="uniform", token_score=token_score).select(
            [scores], [layout]
        )
        kept = selection.per_image()[0][8:]
        kept = set(kept[kept >= 0].tolist())
        for view in range(1, layout.num_views):
            members = (grid // 16 == view).nonzero().squeeze(1)
            k = math.floor(len(members) * 0.5)
            best = members[torch.sort(values[members], descending=True, stable=True).indices[:k]]
            assert {int(grid[i]) for i in best} == {s for s in kept if s // 16 == view}, (token_score, view)


def test_globalcom2_ratio_one_spatial_uniform_keeps_the_packed_sequence():
    layouts = [tiny_layout(size) for size in _sizes(30, seed=6)] + [OneVisionLayout((9, 9), (0, 0), 4)]
    scores = [torch.randn(layout.num_views, 16) for layout in layouts]
    selection = GlobalCom2(**SPATIAL_R1).select(scores, layouts)
    for layout, sources in zip(layouts, selection.per_image()):
        assert torch.equal(sources, layout.packed_sources), layout.image_size


@pytest.mark.parametrize("case", ["batch of sizes", "two images in one prompt"])
def test_globalcom2_ratio_one_matches_no_compression_through_the_model(ov_adapter, with_compressor, case):
    texts, images = CASES[case]
    expected = [r.text for r in ov_adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)]
    adapter = with_compressor(GlobalCom2(**SPATIAL_R1))
    results = adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)
    assert [r.text for r in results] == expected


def test_globalcom2_cosine_compresses_through_the_model(ov_adapter, with_compressor):
    texts, images = CASES["batch of sizes"]
    adapter = with_compressor(GlobalCom2(ratio=0.25, score="cosine"))
    results = adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)
    for result, imgs in zip(results[:3], images):
        layout = adapter.layout((imgs[0].height, imgs[0].width))
        stats = result.stats
        assert stats.visual_tokens_before == len(layout.packed_sources)
        assert stats.visual_tokens_kept < stats.visual_tokens_before
        assert stats.newline_tokens_kept == layout.packed_size[0]
        assert stats.kept_per_view[0][0] == 4 and len(stats.crop_budgets[0]) == layout.num_crops
        views = layout.packed_sources[layout.packed_sources >= 0] // 16
        token_counts = torch.bincount(views, minlength=layout.num_views)[1:].tolist()
        crops = [math.floor(n * r) for n, r in zip(token_counts, stats.crop_budgets[0])]
        assert stats.kept_per_view[0][1:] == crops
        assert stats.visual_tokens_kept == 4 + sum(crops) + layout.packed_size[0]
    assert results[3].stats.visual_tokens_before == 0


def test_cosine_score_is_minus_cosine_to_the_view_mean(ov_adapter):
    pixels = ov_adapter.processor(images=[image(120, 80, 0)], text=[ov_adapter.prompt("x", 1)], return_tensors="pt")[
        "pixel_values"
    ][0]
    with torch.no_grad():
        _, scores = ov_adapter.encode_views(pixels, ScoreRequest("cosine", -1))
        hidden = ov_adapter.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    x = hidden[2]
    expected = -(x @ x.mean(0)) / (x.norm(dim=-1) * x.mean(0).norm())
    torch.testing.assert_close(scores[2], expected, rtol=1e-5, atol=1e-6)


def test_norm_score_is_the_projector_input_norm(ov_adapter):
    pixels = ov_adapter.processor(images=[image(120, 80, 0)], text=[ov_adapter.prompt("x", 1)], return_tensors="pt")[
        "pixel_values"
    ][0]
    with torch.no_grad():
        _, scores = ov_adapter.encode_views(pixels, ScoreRequest("norm", -1))
        hidden = ov_adapter.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    assert scores.shape == hidden.shape[:2] and scores.dtype == torch.float32 and scores.std() > 0
    torch.testing.assert_close(scores, (hidden * hidden).sum(-1).sqrt(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- (e) no CLS on OneVision


def test_cls_score_requests_are_refused(ov_path, ov_adapter, with_compressor):
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    with pytest.raises(ConfigError, match="'globalcom2'.*cls_logit.*'tiny_onevision'.*no CLS.*score=cosine"):
        LlavaOneVisionAdapter(str(ov_path), GlobalCom2(ratio=0.5), name="tiny_onevision", device="cpu")
    adapter = with_compressor(GlobalCom2(ratio=0.5, score="cls_softmax"))
    with pytest.raises(ConfigError, match="cls_softmax"):
        adapter.generate(["Is there a cat?"], [[image(60, 60, 0)]], max_new_tokens=1)


@pytest.mark.parametrize(
    "compressor",
    [FasterVLM(ratio=0.5, unpad=False, score="cosine"), RandomKeep(ratio=0.5, unpad=False)],
    ids=["fastervlm", "random"],
)
def test_padded_grid_conventions_are_refused(ov_path, compressor):
    """unpad=false ranks all padded-grid patches: OneVision packs a downsampled unpadded grid instead."""
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    with pytest.raises(ConfigError, match=f"'{compressor.name}': unpad=false .* use compressor.unpad=true"):
        LlavaOneVisionAdapter(str(ov_path), compressor, name="tiny_onevision", device="cpu")
