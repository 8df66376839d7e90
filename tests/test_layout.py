"""AnyRes layout vs transformers' own LLaVA-NeXT packing (no mocks: a real tiny LlavaNextModel)."""

from __future__ import annotations

import random

import pytest
import torch

from gc2bench.layout import (
    NEWLINE,
    AnyResLayout,
    anyres_layout,
    layout_for,
    select_grid,
    unpadded_region,
)

from conftest import ODD_IMAGE_SIZES

LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TINY_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]


def _model(crop: int, pinpoints):
    from transformers import LlavaNextConfig, LlavaNextModel

    tiny = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": crop, "patch_size": 14, **tiny},
        text_config={"model_type": "llama", "vocab_size": 16, **tiny},
        image_grid_pinpoints=pinpoints,
    )
    return LlavaNextModel(config).eval()


@pytest.fixture(scope="module")
def llava_model():
    return _model(336, LLAVA_PINPOINTS)


@pytest.fixture(scope="module")
def tiny_model():
    return _model(56, TINY_PINPOINTS)


def _sizes(pinpoints, count, seed):
    sizes = [
        *ODD_IMAGE_SIZES,
        (55, 176),
        (88, 55),
        (47, 1128),
    ]
    sizes += [tuple(p) for p in pinpoints] + [(p[0] + 1, p[1] - 1) for p in pinpoints]
    rng = random.Random(seed)
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(count)]
    return sizes


def _transformers_packing(model, image_size_hw, num_views: int, tokens_per_view: int) -> torch.Tensor:
    """Token sources from transformers' pack_image_features applied to an arange."""
    features = torch.arange(num_views * tokens_per_view, dtype=torch.float64).view(num_views, tokens_per_view, 1)
    packed, lengths = model.pack_image_features(
        [features],
        torch.tensor([image_size_hw]),
        "default",
        image_newline=torch.tensor([float(NEWLINE)], dtype=torch.float64),
    )
    assert int(lengths[0]) == packed[0].shape[0]
    return packed[0][:, 0].long()


@pytest.mark.parametrize("which", ["llava", "tiny"])
def test_packed_sources_equal_transformers_packing(which, llava_model, tiny_model):
    model, pinpoints = (llava_model, LLAVA_PINPOINTS) if which == "llava" else (tiny_model, TINY_PINPOINTS)
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
    )

    crop = model.config.vision_config.image_size
    for size in _sizes(pinpoints, 150, seed=len(which)):
        layout = layout_for(model.config, size)
        assert layout.grid == tuple(get_anyres_image_grid_shape(list(size), pinpoints, crop)), size
        expected = _transformers_packing(model, size, layout.num_views, layout.tokens_per_view)
        assert torch.equal(layout.packed_sources, expected), size


def test_tiny_geometry_has_no_fixed_24():
    layout = anyres_layout((100, 60), TINY_PINPOINTS, 56, 4)
    assert layout.tokens_per_view == 16 and layout.padded_size == (layout.grid[0] * 4, layout.grid[1] * 4)
    assert layout.packed_sources[:16].tolist() == list(range(16))


def test_degenerate_sizes_pack_like_transformers(llava_model):
    # 1×4000: no unpadded row at all (only the thumbnail); 4000×1: 24 empty rows, each with a newline.
    wide = layout_for(llava_model.config, (1, 4000))
    tall = layout_for(llava_model.config, (4000, 1))
    assert len(wide.packed_sources) == 576
    assert len(tall.packed_sources) == 576 + 24 and (tall.packed_sources[576:] == NEWLINE).all()


def test_pinpoint_order_changes_only_ties():
    # transformers reads pinpoints as (h, w), LLaVA as (w, h): a square image ties [336,672] with [672,336].
    assert select_grid((336, 336), LLAVA_PINPOINTS, 336, "hw") == (1, 2)
    assert select_grid((336, 336), LLAVA_PINPOINTS, 336, "wh") == (2, 1)
    assert select_grid((480, 640), LLAVA_PINPOINTS, 336, "hw") == select_grid((480, 640), LLAVA_PINPOINTS, 336, "wh")
    with pytest.raises(ValueError, match="pinpoint_order"):
        select_grid((10, 10), LLAVA_PINPOINTS, 336, "xy")


def test_unpad_arithmetic_llava_vs_transformers():
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    # 55×176 on a 1×2 grid: 55·(48/176) = 14.999…; LLaVA truncates to 14 rows, transformers rounds to 15.
    assert unpadded_region((55, 176), (1, 2), 24, "llava") == (5, 19, 0, 48)
    assert unpadded_region((55, 176), (1, 2), 24, "transformers") == (4, 20, 0, 48)
    grid = torch.arange(24 * 48).view(1, 24, 48)
    assert unpad_image(grid, [55, 176]).shape[1:] == (16, 48)
    with pytest.raises(ValueError, match="unpad"):
        unpadded_region((55, 176), (1, 2), 24, "numpy")


def test_padded_newline_mode_has_one_per_grid_row():
    layout = anyres_layout((480, 640), LLAVA_PINPOINTS, 336, 24)
    padded = layout.sources("llava", "padded")
    unpadded = layout.sources("llava", "unpadded")
    top, bottom, _, _ = layout.unpadded_region("llava")
    assert int((padded == NEWLINE).sum()) == layout.padded_size[0]
    assert int((unpadded == NEWLINE).sum()) == bottom - top
    assert torch.equal(padded[padded != NEWLINE], unpadded[unpadded != NEWLINE])


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="image_size"):
        anyres_layout((0, 10), LLAVA_PINPOINTS, 336, 24)
    with pytest.raises(ValueError, match="grid"):
        AnyResLayout((10, 10), (0, 1), 24)
