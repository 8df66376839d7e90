"""GlobalCom² selection: options, counts, equivalences, bad input, batching."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gc2bench.compressors.base import ScoreRequest
from gc2bench.compressors.globalcom2 import GlobalCom2, crop_geometry
from gc2bench.layout import NEWLINE, PAD, anyres_layout

PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TINY_PINS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]


def layout(h, w, tiny=False):
    return anyres_layout((h, w), TINY_PINS, 56, 4) if tiny else anyres_layout((h, w), PINS, 336, 24)


def scores_for(lay, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lay.num_views, lay.tokens_per_view, generator=g) * scale


def parts(selection, b=0):
    """(thumbnail sources, crop-side sources) of image b."""
    sources = selection.per_image()[b]
    k = selection.info["thumbnail_keep_count"]
    return sources[:k], sources[k:]


def oracle_budgets(thumb, grid, ratio, tau=10.0):
    """r_j written from the paper's Eqs. 2–5 (+ the code's 1e-8 and clip), in plain Python/numpy."""
    rows, cols = grid
    side = math.isqrt(len(thumb))
    cell_h, cell_w = max(side // rows, 1), max(side // cols, 1)
    sums = np.zeros(rows * cols)
    for idx, value in enumerate(thumb):
        r, c = divmod(idx, side)
        sums[min(r // cell_h, rows - 1) * cols + min(c // cell_w, cols - 1)] += value
    e = np.exp((sums - sums.max()) / tau)
    sigma = e / (e.sum() + 1e-8)
    return np.minimum(ratio * (1 + sigma - sigma.mean()), 1.0)


# --------------------------------------------------------------------------- config


def test_yaml_options_reach_the_constructor():
    from hydra.utils import instantiate

    from gc2bench.config import compose_run_config

    overrides = {
        "score": "cosine",
        "tau": 3.0,
        "alpha": 0.25,
        "allocation": "n_topk",
        "token_score": "local",
        "thumbnail_order": "spatial",
        "newlines": "unpadded",
        "unpad": "transformers",
        "crop_layout": "spatial",
        "check_finite": False,
    }
    default = instantiate(compose_run_config(["compressor=globalcom2", "ratio=0.25"], check=False).compressor)
    changed = instantiate(
        compose_run_config(
            ["compressor=globalcom2", "ratio=0.1"] + [f"compressor.{k}={v}" for k, v in overrides.items()], check=False
        ).compressor
    )
    with pytest.raises(Exception, match="ratio=1.5"):
        instantiate(compose_run_config(["compressor=globalcom2", "ratio=1.5"], check=False).compressor)
    assert isinstance(default, GlobalCom2) and default.ratio == 0.25 and default.name == "globalcom2"
    assert default.params() == {**GlobalCom2(ratio=0.25).params()}
    assert changed.ratio == 0.1 and all(getattr(changed, k) == v for k, v in overrides.items())
    assert changed.score_request == ScoreRequest("cosine", -1)
    params = json.loads(json.dumps(changed.params()))
    assert params["allocation"] == "n_topk" and "newlines not counted" in params["convention"]


def test_score_option_sets_the_request():
    assert GlobalCom2().score_request == ScoreRequest("cls_logit", -1)
    assert GlobalCom2(score="cls_softmax").score_request == ScoreRequest("cls_softmax", -1)


# --------------------------------------------------------------------------- counts and equivalences


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (1000, 500), (336, 336), (1, 1), (55, 176), (2000, 300)])
def test_full_ratio_spatial_mode_equals_transformers_packing(size):
    lay = layout(*size)
    full = GlobalCom2(
        ratio=1.0,
        allocation="uniform",
        thumbnail_order="spatial",
        newlines="unpadded",
        unpad="transformers",
        crop_layout="spatial",
    )
    selection = full.select([scores_for(lay)], [lay])
    assert torch.equal(selection.per_image()[0], lay.packed_sources)


def test_full_ratio_still_drops_tokens_with_softmax_budgets():
    # r_j = R(1 + σ_j − mean σ) is clipped at 1 only from above: at R = 1 poorer crops keep < 100%.
    lay = layout(480, 640)
    budgets = GlobalCom2(ratio=1.0).select([scores_for(lay)], [lay]).crop_budgets[0]
    assert float(budgets.max()) == 1.0 and float(budgets.min()) < 1.0


def test_kept_counts_are_exact():
    for size, ratio in [((480, 640), 0.25), ((1080, 1920), 0.1), ((500, 2000), 0.75), ((333, 777), 0.5)]:
        lay = layout(*size)
        s = scores_for(lay, seed=size[0])
        selection = GlobalCom2(ratio=ratio).select([s], [lay])
        thumb, crops = parts(selection)
        geo = crop_geometry(lay, "llava", "padded", "authors")
        budgets = oracle_budgets(s[0].tolist(), lay.grid, ratio)
        np.testing.assert_allclose(selection.crop_budgets[0].numpy(), budgets, rtol=0, atol=1e-12)
        assert len(thumb) == int(576 * ratio)
        kept_views = torch.bincount(crops[crops != NEWLINE] // 576, minlength=lay.num_views)[1:]
        expected = [int(n * r) for n, r in zip(geo.token_counts.tolist(), budgets)]
        assert kept_views.tolist() == expected == selection.info["crop_keep_counts"][0].tolist()
        assert int((crops == NEWLINE).sum()) == lay.padded_size[0]
        assert int(selection.num_tokens[0]) == len(thumb) + sum(expected) + lay.padded_size[0]


def test_thumbnail_keeps_top_scores_in_descending_order():
    lay = layout(480, 640)
    s = scores_for(lay)
    thumb, _ = parts(GlobalCom2(ratio=0.1).select([s], [lay]))
    assert thumb.tolist() == torch.argsort(s[0], descending=True)[:57].tolist()
    spatial, _ = parts(GlobalCom2(ratio=0.1, thumbnail_order="spatial").select([s], [lay]))
    assert spatial.tolist() == sorted(thumb.tolist())


def test_ties_go_to_the_lower_index():
    lay = layout(480, 640)
    selection = GlobalCom2(ratio=0.25, crop_layout="spatial").select([torch.zeros(5, 576)], [lay])
    thumb, crops = parts(selection)
    assert thumb.tolist() == list(range(144))
    geo = crop_geometry(lay, "llava", "padded", "spatial")
    for j in range(4):
        kept = crops[(crops // 576) == j + 1] % 576
        unpadded = geo.unpad_mask[j].nonzero().squeeze(1)
        assert kept.tolist() == unpadded[: len(kept)].tolist()


# --------------------------------------------------------------------------- each option changes the result


def test_allocation_options():
    lay = layout(480, 640)  # 2×2 grid
    s = scores_for(lay)
    s[0].view(24, 24)[:12, :12] += 4.0  # a rich top-left cell
    uniform = GlobalCom2(ratio=0.25, allocation="uniform").select([s], [lay]).crop_budgets[0]
    assert uniform.tolist() == [0.25] * 4
    n_topk = GlobalCom2(ratio=0.25, allocation="n_topk").select([s], [lay]).crop_budgets[0]
    top = torch.argsort(s[0], descending=True, stable=True)[:144]
    share = torch.bincount((top // 24 // 12) * 2 + (top % 24) // 12, minlength=4).double() / 144
    torch.testing.assert_close(n_topk, (0.25 * (1 + share - share.mean())).clamp(max=1.0))
    assert n_topk[0] == n_topk.max()

    # One spike in cell 1 vs broad mass in cell 0: the sum favours 0, the max favours 1.
    spike = torch.zeros(5, 576)
    spike[0].view(24, 24)[:12, :12] = 1.0
    spike[0].view(24, 24)[0, 12] = 50.0
    by_sum = GlobalCom2(ratio=0.25, allocation="softmax_sum").select([spike], [lay]).crop_budgets[0]
    by_max = GlobalCom2(ratio=0.25, allocation="softmax_max").select([spike], [lay]).crop_budgets[0]
    assert by_sum.argmax() == 0 and by_max.argmax() == 1


def test_tau_sharpens_budgets():
    lay = layout(480, 640)
    s = scores_for(lay)
    spread = [GlobalCom2(ratio=0.25, tau=t).select([s], [lay]).crop_budgets[0].std() for t in (100.0, 10.0, 1.0)]
    assert spread[0] < spread[1] < spread[2]


def _kept_by_crop(selection, lay):
    _, crops = parts(selection)
    crops = crops[crops != NEWLINE]
    return [set((crops[(crops // 576) == j + 1] % 576).tolist()) for j in range(lay.num_crops)]


def test_token_score_options_rank_by_their_score():
    lay = layout(640, 640)  # 2×2, no padding
    s = scores_for(lay)
    counts = GlobalCom2(ratio=0.25).select([s], [lay]).info["crop_keep_counts"][0].tolist()
    local = _kept_by_crop(GlobalCom2(ratio=0.25, token_score="local").select([s], [lay]), lay)
    global_ = _kept_by_crop(GlobalCom2(ratio=0.25, token_score="global").select([s], [lay]), lay)
    both = _kept_by_crop(GlobalCom2(ratio=0.25).select([s], [lay]), lay)
    resized = F.interpolate(s[0].view(1, 1, 24, 24), size=(48, 48), mode="bilinear", align_corners=False)[0, 0]
    for j in range(4):
        assert local[j] == set(torch.argsort(s[j + 1], descending=True)[: counts[j]].tolist())
        cut = resized[(j // 2) * 24 : (j // 2 + 1) * 24, (j % 2) * 24 : (j % 2 + 1) * 24].flatten()
        assert global_[j] == set(torch.argsort(cut, descending=True)[: counts[j]].tolist())
        assert both[j] != local[j] and both[j] != global_[j]
    assert _kept_by_crop(GlobalCom2(ratio=0.25, alpha=0.0).select([s], [lay]), lay) == local
    assert _kept_by_crop(GlobalCom2(ratio=0.25, alpha=1.0).select([s], [lay]), lay) == global_


def test_newline_modes():
    lay = layout(480, 640)
    s = scores_for(lay)
    padded = parts(GlobalCom2(ratio=0.5).select([s], [lay]))[1]
    unpadded = parts(GlobalCom2(ratio=0.5, newlines="unpadded").select([s], [lay]))[1]
    top, bottom, _, _ = lay.unpadded_region("llava")
    assert int((padded == NEWLINE).sum()) == 48 and int((unpadded == NEWLINE).sum()) == bottom - top == 36
    assert torch.equal(padded[padded != NEWLINE], unpadded[unpadded != NEWLINE])


def test_unpad_option_changes_unpadded_tokens():
    lay = layout(55, 176)
    s = scores_for(lay)
    llava = GlobalCom2(ratio=1.0).select([s], [lay]).info["crop_token_counts"][0]
    hf = GlobalCom2(ratio=1.0, unpad="transformers").select([s], [lay]).info["crop_token_counts"][0]
    assert llava.tolist() == [14 * 24, 14 * 24] and hf.tolist() == [16 * 24, 16 * 24]


def test_crop_layout_authors_rewraps_width_padded_crops():
    lay = layout(640, 480)  # 2×2 grid, columns padded: crops are 18 patches wide
    s = scores_for(lay)
    authors = parts(GlobalCom2(ratio=0.5).select([s], [lay]))[1]
    spatial = parts(GlobalCom2(ratio=0.5, crop_layout="spatial").select([s], [lay]))[1]
    authors, spatial = authors[authors != NEWLINE], spatial[spatial != NEWLINE]
    assert set(authors.tolist()) == set(spatial.tolist()) and not torch.equal(authors, spatial)
    grid_sources = lay.grid_sources().flatten() - 576
    position = torch.empty_like(grid_sources)  # source - 576 -> raster position over the whole grid
    position[grid_sources] = torch.arange(len(grid_sources))
    assert bool((position[spatial - 576].diff() > 0).all())
    # The authors' code writes unpadded token k of a crop into its slot k (slot row k // 24): line 0 holds
    # crop 1's tokens k = 0..23, i.e. its true row 0 (18 tokens) and the first 6 of true row 1.
    geo = crop_geometry(lay, "llava", "padded", "authors")
    assert geo.canvas_source[:24].tolist() == [576 + p for p in geo.unpad_mask[0].nonzero().squeeze(1)[:24].tolist()]


# --------------------------------------------------------------------------- bad input and degenerate geometry


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.0000001, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        GlobalCom2(ratio=ratio)


@pytest.mark.parametrize(
    "option,value",
    [
        ("allocation", "max"),
        ("token_score", "all"),
        ("score", "attn"),
        ("newlines", "none"),
        ("unpad", "numpy"),
        ("crop_layout", "raster"),
        ("thumbnail_order", "random"),
        ("tau", 0.0),
        ("alpha", 1.5),
    ],
)
def test_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        GlobalCom2(**{option: value})


@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_non_finite_scores(bad, word):
    good, lay = layout(480, 640), layout(480, 640)
    s = scores_for(lay)
    s[3, 17] = bad
    with pytest.raises(ValueError, match=rf"image 1: .*{word}.*views \[3\]"):
        GlobalCom2().select([scores_for(good), s], [good, lay])


def test_shapes_disagreeing_with_layout():
    lay = layout(480, 640)
    with pytest.raises(ValueError, match=r"image 0: scores have shape \(3, 576\).*needs \(5, 576\)"):
        GlobalCom2().select([torch.zeros(3, 576)], [lay])
    with pytest.raises(ValueError, match=r"needs \(5, 576\)"):
        GlobalCom2().select([torch.zeros(5, 16)], [lay])
    with pytest.raises(ValueError, match="needs"):
        GlobalCom2().select([torch.zeros(5 * 576)], [lay])
    with pytest.raises(ValueError, match="2 score tensors for 1 layouts"):
        GlobalCom2().select([torch.zeros(5, 576)] * 2, [lay])
    with pytest.raises(ValueError, match="same patches_per_side"):
        tiny = layout(100, 60, tiny=True)
        GlobalCom2().select([torch.zeros(5, 576), torch.zeros(tiny.num_views, 16)], [lay, tiny])
    with pytest.raises(ValueError, match=r"features have shape \(5, 576, 8\).*\[3, 576, D\]"):
        other = layout(1000, 500)
        GlobalCom2().compress([torch.zeros(5, 576, 8)], torch.zeros(8), [torch.zeros(3, 576)], [other])


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1), (2, 900), (900, 2)])
def test_degenerate_geometry(size):
    lay = layout(*size)
    s = scores_for(lay)
    for mode in ({}, {"newlines": "unpadded", "crop_layout": "spatial", "unpad": "transformers"}):
        selection = GlobalCom2(ratio=0.5, **mode).select([s], [lay])
        geo = crop_geometry(
            lay, mode.get("unpad", "llava"), mode.get("newlines", "padded"), mode.get("crop_layout", "authors")
        )
        counts = selection.info["crop_keep_counts"][0]
        assert bool((counts <= geo.token_counts).all())
        assert bool((counts[geo.token_counts == 0] == 0).all())
        _, crops = parts(selection)
        assert len(crops) == int(counts.sum()) + geo.num_newlines


def test_tiny_patch_grid():
    lay = layout(100, 60, tiny=True)
    s = scores_for(lay)
    selection = GlobalCom2(ratio=0.5).select([s], [lay])
    thumb, crops = parts(selection)
    assert len(thumb) == 8 and int((crops == NEWLINE).sum()) == lay.padded_size[0]
    assert bool((crops[crops != NEWLINE] // 16 >= 1).all())


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"allocation": "n_topk", "newlines": "unpadded", "crop_layout": "spatial"},
        {"allocation": "softmax_max", "token_score": "global"},
    ],
)
def test_batch_of_different_sizes_equals_one_at_a_time(options):
    sizes = [(480, 640), (1, 1), (2000, 500), (336, 336), (480, 640), (1080, 1920), (4000, 1)]
    layouts = [layout(*size) for size in sizes]
    scores = [scores_for(lay, seed=i) for i, lay in enumerate(layouts)]
    compressor = GlobalCom2(ratio=0.3, **options)
    batch = compressor.select(scores, layouts)
    assert batch.token_sources.shape[0] == len(sizes)
    for b, (s, lay) in enumerate(zip(scores, layouts)):
        single = compressor.select([s], [lay])
        assert torch.equal(batch.per_image()[b], single.per_image()[0])
        assert bool((batch.token_sources[b, int(batch.num_tokens[b]) :] == PAD).all())
        width = lay.num_crops
        torch.testing.assert_close(batch.crop_budgets[b, :width], single.crop_budgets[0], rtol=0, atol=0)
        assert bool(batch.crop_budgets[b, width:].isnan().all())


def test_compress_packs_features_and_newlines():
    lay = layout(480, 640)
    s = scores_for(lay)
    features = torch.randn(lay.num_views, 576, 8)
    newline = torch.randn(8)
    packed, selection = GlobalCom2(ratio=0.25).compress([features], newline, [s], [lay])
    sources = selection.per_image()[0]
    assert packed[0].shape == (len(sources), 8)
    table = torch.cat([features.flatten(0, 1), newline[None]])
    torch.testing.assert_close(packed[0], table[torch.where(sources == NEWLINE, len(table) - 1, sources)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    sizes = [(480, 640), (1, 1), (2000, 500), (336, 336), (1080, 1920)]
    layouts = [layout(*size) for size in sizes]
    scores = [scores_for(lay, seed=i) for i, lay in enumerate(layouts)]
    scores[1][:] = 0.0  # all ties
    compressor = GlobalCom2(ratio=0.3)
    cpu = compressor.select(scores, layouts)
    gpu = compressor.select([s.cuda() for s in scores], layouts)
    assert torch.equal(cpu.token_sources, gpu.token_sources.cpu())
    torch.testing.assert_close(cpu.crop_budgets, gpu.crop_budgets.cpu(), rtol=0, atol=1e-12, equal_nan=True)
