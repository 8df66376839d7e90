"""model.pipeline=llava|transformers: the original LLaVA code's AnyRes rules vs transformers'.

Sizes below are PIL (width, height), as the issue and LLaVA's ``image.size`` write them.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from gc2bench.compressors.base import NEWLINE
from gc2bench.compressors.none import NoCompression


def image(width, height, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def adapters(tiny_path):
    from gc2bench.models.llava_next import LlavaNextAdapter

    return {
        pipeline: LlavaNextAdapter(
            str(tiny_path), NoCompression(), name="tiny", dtype="float32", device="cpu", pipeline=pipeline
        )
        for pipeline in ("transformers", "llava")
    }


# (width, height): (LLaVA's visual tokens, transformers') on the tiny model's geometry (56-px crops, 4×4 patches).
TOKEN_COUNTS = {(188, 47): (42, 68), (343, 392): (72, 88), (40, 40): (36, 36)}


@pytest.mark.parametrize("size", list(TOKEN_COUNTS))
def test_visual_token_counts_follow_the_pipeline(adapters, size):
    llava, hf = TOKEN_COUNTS[size]
    for pipeline, expected in (("llava", llava), ("transformers", hf)):
        result = adapters[pipeline].generate(["Is there a cat?"], [[image(*size)]], max_new_tokens=2, do_sample=False)
        assert result[0].stats.visual_tokens_before == expected, pipeline
        assert result[0].stats.visual_tokens_kept == expected, pipeline


def test_tie_gets_a_tall_grid_in_llava_and_a_wide_one_in_transformers(adapters):
    """40×40 ties between the 56×112 and 112×56 pinpoints: LLaVA reads [56, 112] as width 56, height 112."""
    img = image(40, 40, 3)
    grids = {}
    for pipeline, adapter in adapters.items():
        adapter.generate(["Is there a cat?"], [[img]], max_new_tokens=1, do_sample=False)
        grids[pipeline] = adapter.last_selection[0][0].grid
    assert grids == {"llava": (2, 1), "transformers": (1, 2)}


def test_llava_processor_cuts_the_crops_of_llavas_grid(adapters):
    """The crops fed under pipeline=llava are exactly those of transformers' processor forced to the tall grid."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    img = image(40, 40, 4)
    processor = adapters["llava"].processor
    pixels = processor.image_processor([img], return_tensors="pt")["pixel_values"][0]
    tall = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=[[112, 56]]
    )([img], return_tensors="pt")["pixel_values"][0]
    wide = adapters["transformers"].processor.image_processor([img], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixels, tall)
    assert not torch.equal(pixels[1:], wide[1:])


def llava_arch_pack(view_features, newline, grid, size_wh):
    """LLaVA's llava_arch.py 'spatial_unpad' packing of one image, written out from its rules:
    crops viewed as (rows, cols, pps, pps, D), unpad_image with int() on (width, height), a newline
    after every row, the thumbnail first."""
    base, crops = view_features[0], view_features[1:]
    pps = int(round(base.shape[0] ** 0.5))
    rows, cols = grid
    feat = crops.view(rows, cols, pps, pps, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    width, height = size_wh
    cur_h, cur_w = feat.shape[1:]
    if width / height > cur_w / cur_h:
        new_h = int(height * (cur_w / width))
        pad = (cur_h - new_h) // 2
        feat = feat[:, pad : cur_h - pad, :]
    else:
        new_w = int(width * (cur_h / height))
        pad = (cur_w - new_w) // 2
        feat = feat[:, :, pad : cur_w - pad]
    feat = torch.cat([feat, newline[:, None, None].expand(*feat.shape[:-1], 1)], dim=-1)
    return torch.cat([base, feat.flatten(1, 2).transpose(0, 1)])


@pytest.mark.parametrize("size", [(188, 47), (343, 392), (40, 40), (47, 188)])
def test_llava_pipeline_feeds_llava_arch_packing(adapters, size):
    """What reaches the LLM under pipeline=llava equals LLaVA's own packing of the same view features."""
    adapter = adapters["llava"]
    img = image(*size, 5)
    fed = {}

    def capture(module, args, kwargs):
        fed.setdefault("embeds", kwargs["inputs_embeds"])

    handle = adapter.model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        adapter.generate(["Is there a cat?"], [[img]], max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    layout, sources = adapter.last_selection[0]
    assert sources.tolist() == layout.packed_sources.tolist()
    pixels = adapter.processor.image_processor([img], return_tensors="pt")["pixel_values"][0]
    with torch.no_grad():
        views, _ = adapter.encode_views(pixels[: layout.num_views], NoCompression.score_request)
        expected = llava_arch_pack(views, adapter.model.model.image_newline, layout.grid, size)
    prompt = adapter.prompt("Is there a cat?", 1)
    ids = adapter.processor(images=[img], text=[prompt], return_tensors="pt")["input_ids"][0]
    first = int((ids == adapter.image_token_id).nonzero()[0])
    got = fed["embeds"][0, first : first + len(expected)]
    assert len(sources) == len(expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert int((sources == NEWLINE).sum()) == int((layout.packed_sources == NEWLINE).sum())


def test_transformers_pipeline_is_plain_transformers(adapters):
    """pipeline=transformers keeps feeding exactly what transformers' own forward packs (logits equal)."""
    adapter = adapters["transformers"]
    img = image(188, 47, 6)
    prompt = adapter.prompt("Is there a cat?", 1)
    inputs = adapter.processor(images=[img], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        expected = adapter.model.generate(**inputs, max_new_tokens=3, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
    got = adapter.generate(["Is there a cat?"], [[img]], max_new_tokens=3, do_sample=False)[0]
    assert got.token_ids == expected.tolist()


def test_every_compressor_sees_the_pipelines_layout(tiny_path):
    """FasterVLM at R = 1 with unpad=true keeps exactly the llava pipeline's packed tokens (42, not 68)."""
    from gc2bench.compressors.fastervlm import FasterVLM
    from gc2bench.models.llava_next import LlavaNextAdapter

    adapter = LlavaNextAdapter(
        str(tiny_path), FasterVLM(ratio=1.0), name="tiny", dtype="float32", device="cpu", pipeline="llava"
    )
    result = adapter.generate(["Is there a cat?"], [[image(188, 47, 7)]], max_new_tokens=1, do_sample=False)[0]
    assert result.stats.visual_tokens_before == 42
    assert result.stats.visual_tokens_kept == 42
    assert adapter.describe()["pipeline"] == "llava"


def test_bad_pipeline_is_refused_before_loading(tiny_path):
    from gc2bench.config import ConfigError
    from gc2bench.models.llava_next import LlavaNextAdapter

    with pytest.raises(ConfigError, match="model.pipeline='hf'"):
        LlavaNextAdapter(str(tiny_path), NoCompression(), pipeline="hf")


def test_onevision_refuses_the_llava_pipeline(cache_dir):
    from gc2bench.config import ConfigError
    from gc2bench.models.tiny_onevision import load_tiny_onevision

    with pytest.raises(ConfigError, match="model.pipeline='llava'"):
        load_tiny_onevision(NoCompression(), pipeline="llava")


def test_llava_next_7b_geometry_tie_and_truncation():
    """On LLaVA-NeXT's own pinpoints (336-px crops, 24×24 patches): a small square image ties between
    [336, 672] and [672, 336] — 2 crops stacked in LLaVA, side by side in transformers."""
    from gc2bench.layout import PIPELINE_RULES, anyres_layout

    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    layouts = {
        pipeline: anyres_layout((300, 300), pins, 336, 24, rules["pinpoint_order"], rules["unpad"])
        for pipeline, rules in PIPELINE_RULES.items()
    }
    assert layouts["llava"].grid == (2, 1) and layouts["transformers"].grid == (1, 2)
    # 47×188 (h×w) on a 1×3 grid of 4×4 patches: 47·(12/188) = 2.9999999… in floats; int() keeps 2 rows
    # (padding 1 above and below), int(round(x, 7)) keeps 3 and so all 4 rows (padding (4 − 3) // 2 = 0).
    tiny = {
        pipeline: anyres_layout((47, 188), [[56, 168]], 56, 4, "hw", rules["unpad"])
        for pipeline, rules in PIPELINE_RULES.items()
    }
    assert [tiny[p].unpadded_region() for p in ("llava", "transformers")] == [(1, 3, 0, 12), (0, 4, 0, 12)]
