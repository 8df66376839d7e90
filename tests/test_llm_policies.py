"""LLM-stage policies (PDrop, SparseVLM, "+GlobalCom²") on synthetic LLMContexts: no model needed."""

import contextlib
import math
import re
from itertools import pairwise

import pytest
import torch

from gc2bench.compressors.base import SEGMENT_NEWLINE, SEGMENT_RECYCLED, SEGMENT_TEXT, DecoderStage, LLMContext
from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.hybrid import FastVGlobalCom2, SparseVLMGlobalCom2, keep_top_per_group
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.pdrop import PDrop
from gc2bench.compressors.sparsevlm import PRESETS, SparseVLM, recycled_groups, text_raters
from gc2bench.config import ConfigError
from gc2bench.layout import AnyResLayout


def context(
    image,
    *,
    attention=None,
    stage_index=0,
    dim=8,
    segment=None,
    budgets=None,
    seed=0,
    valid=None,
    original_index=None,
    input_embeds=None,
    hidden=None,
    at_start=None,
):
    """An LLMContext over rows ``image`` [B, L] bool (random embeddings/attention unless given)."""
    image = torch.as_tensor(image, dtype=torch.bool)
    batch, length = image.shape
    gen = torch.Generator().manual_seed(seed)
    valid = torch.ones_like(image) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    if segment is None:
        segment = torch.where(image, 0, SEGMENT_TEXT)
    if original_index is None:
        original_index = torch.arange(length).expand(batch, length).clone()
    if input_embeds is None:
        input_embeds = torch.randn(batch, int(original_index.max()) + 1, dim, generator=gen)
    if hidden is None:
        hidden = torch.randn(batch, length, input_embeds.shape[-1], generator=gen)
    if attention is None:
        attention = torch.rand(batch, length, generator=gen)
    return LLMContext(
        stage_index=stage_index,
        stage=DecoderStage(1, 1),
        hidden=hidden,
        input_embeds=input_embeds,
        original_index=original_index,
        image=image,
        valid=valid,
        segment=torch.as_tensor(segment),
        image_tokens_at_start=image.sum(1) if at_start is None else torch.as_tensor(at_start),
        segment_budgets=budgets,
        attention=torch.as_tensor(attention, dtype=torch.float32),
        generator=torch.Generator().manual_seed(1234),
    )


def block(text_before, n_image, text_after, pad=0):
    """One row: padding, text, an image block, text."""
    return [False] * (pad + text_before) + [True] * n_image + [False] * text_after


def top_set(scores, mask, k):
    idx = torch.nonzero(mask).flatten()
    order = torch.sort(scores[idx], descending=True, stable=True).indices[:k]
    return set(idx[order].tolist())


# ----------------------------------------------------------------------------------------- PDrop


def test_pdrop_lambda_solves_the_layer_averaged_share():
    assert PDrop(0.75).lam_for(32) == pytest.approx(0.811, abs=5e-4)
    assert PDrop(0.5).lam_for(32) == pytest.approx(0.544, abs=5e-4)
    for ratio in (0.75, 0.5, 0.3):
        pdrop = PDrop(ratio)
        lam = pdrop.lam_for(32)
        assert (1 + lam + lam**2 + lam**3) / 4 == pytest.approx(ratio, abs=1e-9)
        assert sum(pdrop.schedule(32)) / 32 == pytest.approx(ratio, abs=1e-9)
    assert PDrop(1.0).lam_for(32) == 1.0
    assert PDrop(0.46875).lam_for(32) == 0.5  # (1 + .5 + .25 + .125)/4: the authors' λ, exactly
    assert PDrop(0.3, lam=0.5).lam_for(32) == 0.5  # explicit λ overrides the solve
    assert PDrop(0.5).params()["solved_lam"] is None
    assert PDrop(0.5, num_layers=32).params()["solved_lam"] == PDrop(0.5).lam_for(32)
    info = PDrop(0.5).schedule_info(32)
    assert info["layer_share"] == pytest.approx(0.5) and len(info["kept_fraction_per_layer"]) == 32


@pytest.mark.parametrize("ratio", [0.25, 0.1])
def test_pdrop_unreachable_ratio_names_layers_that_reach_it(ratio):
    with pytest.raises(ValueError, match=r"cannot be reached with layers=\[8, 16, 24\].*at least 8/32 = 0.25") as err:
        PDrop(ratio).stages(32)
    suggested = [int(x) for x in re.search(r"compressor\.layers=\[([\d, ]+)\]", str(err.value)).group(1).split(",")]
    fixed = PDrop(ratio, layers=suggested)
    fixed.stages(32)
    assert fixed.share(fixed.lam_for(32), 32) == pytest.approx(ratio, abs=1e-9)
    with pytest.raises(ValueError, match="no layer list reaches it"):
        PDrop(0.02).stages(32)


def test_pdrop_layers_are_validated():
    with pytest.raises(ValueError, match=r"do not fit a 4-layer LLM.*compressor.layers=\[1, 2, 3\]"):
        PDrop(0.5, layers=[8, 16, 24]).stages(4)
    with pytest.raises(ValueError, match="do not fit"):
        PDrop(0.5, layers=[8, 16, 24], num_layers=4)
    auto = PDrop(0.5)  # "auto": the authors' layers where they fit, scaled where they do not
    assert auto.stages(32) == [DecoderStage(8, 8), DecoderStage(16, 16), DecoderStage(24, 24)]
    assert PDrop(0.5).stages(4) == [DecoderStage(1, 1), DecoderStage(2, 2), DecoderStage(3, 3)]
    assert PDrop(0.5).params()["layers"] == "auto" and PDrop(0.5).schedule_info(4)["layers"] == [1, 2, 3]
    for bad in ([8, 8], [], [0, 4], [3, 2], "x"):
        with pytest.raises(ValueError, match="layers="):
            PDrop(0.5, layers=bad)
    with pytest.raises(ConfigError, match="ratio=1.5"):
        PDrop(1.5)
    with pytest.raises(ValueError, match="lam=0.0"):
        PDrop(0.5, lam=0.0)
    assert PDrop(0.5, layers=[1, 2, 3]).stages(4) == [DecoderStage(1, 1), DecoderStage(2, 2), DecoderStage(3, 3)]


def test_pdrop_keeps_floor_of_n_lambda_s_from_the_original_count_by_attention():
    # N = 10, λ = 0.55: the authors' int(N·λ^s) gives 5, 3, 1 (iterated floors would give 5, 2, 1).
    pdrop = PDrop(0.5, layers=[1, 2, 3], lam=0.55)
    pdrop.stages(4)
    assert pdrop.layer_counts(10, 4) == [10, 5, 3, 1]
    rows = torch.tensor([block(2, 10, 3), block(1, 7, 2, pad=5)])
    image = rows.clone()
    for stage in range(3):
        ctx = context(image, stage_index=stage, seed=stage, at_start=[10, 7])
        keep = pdrop.prune(ctx).keep
        assert keep[~ctx.image].all()
        for b, n0 in enumerate((10, 7)):
            expected = min(math.floor(n0 * 0.55 ** (stage + 1)), int(ctx.image[b].sum()))
            kept = set(torch.nonzero(keep[b] & ctx.image[b]).flatten().tolist())
            assert len(kept) == expected == pdrop.layer_counts(n0, 4)[stage + 1]
            assert kept == top_set(ctx.attention[b], ctx.image[b], expected)
        image = image & keep
    assert pdrop.positions == "compact"
    rows = pdrop.query_rows(ctx)
    assert rows[:, -1].all() and rows.sum() == 2


def test_pdrop_at_ratio_one_keeps_everything():
    pdrop = PDrop(1.0, layers=[1, 2, 3])
    pdrop.stages(4)
    ctx = context([block(2, 9, 3)])
    for stage in range(3):
        ctx.stage_index = stage
        assert pdrop.prune(ctx).keep.all()


# ------------------------------------------------------------------------------------- SparseVLM


def test_sparsevlm_raters_are_text_after_the_image_above_the_mean():
    dim = 4
    e0 = torch.eye(dim)[0]
    # row: pad, BOS-like text (very similar to the image: never a rater), 4 image tokens, 4 text tokens
    image = torch.tensor([[False, False, True, True, True, True, False, False, False, False]])
    valid = torch.tensor([[False] + [True] * 9])
    embeds = torch.zeros(1, 10, dim)
    embeds[0, 1] = 9 * e0
    embeds[0, 2:6] = e0
    embeds[0, 6] = 3 * e0  # softmax over text of [3, 0, 0, 2]: e^3 and e^2 are above the mean
    embeds[0, 9] = 2 * e0
    ctx = context(image, valid=valid, input_embeds=embeds)
    assert text_raters(ctx)[0].tolist() == [False] * 6 + [True, False, False, True]

    # random rows (different lengths, left padding) against a direct per-row computation
    gen = torch.Generator().manual_seed(3)
    rows = torch.tensor([block(3, 6, 5), block(1, 4, 7, pad=2)])
    valid = torch.tensor([[True] * 14, [False] * 2 + [True] * 12])
    embeds = torch.randn(2, 14, 16, generator=gen)
    ctx = context(rows, valid=valid, input_embeds=embeds)
    raters = text_raters(ctx)
    for b in range(2):
        img = torch.nonzero(rows[b]).flatten()
        text = torch.arange(int(img.max()) + 1, 14)
        p = (embeds[b, img] @ embeds[b, text].T).softmax(-1).mean(0)
        expected = torch.zeros(14, dtype=torch.bool)
        expected[text[p > p.mean()]] = True
        assert torch.equal(raters[b], expected) and expected.any()


def test_sparsevlm_rater_fallbacks():
    no_text_after = context([block(3, 5, 0)])
    assert text_raters(no_text_after)[0].tolist() == [False] * 7 + [True]
    one_text_token = context([block(3, 5, 1)])  # softmax over one token: none above the mean
    assert text_raters(one_text_token)[0].tolist() == [False] * 8 + [True]


def test_sparsevlm_recycled_tokens_compete_at_later_stages():
    sparse = SparseVLM(0.5, layers=[0, 1, 2], tokens=[200, 100, 50], recycle=False)
    sparse.stages(4)
    image = torch.tensor([block(2, 10, 3)])
    segment = torch.where(image, 0, SEGMENT_TEXT)
    segment[0, 10:12] = SEGMENT_RECYCLED
    attention = torch.linspace(0.1, 1.0, 15)[None]
    attention[0, 10], attention[0, 11] = 5.0, 0.0  # recycled: the most and the least relevant
    ctx = context(image, segment=segment, attention=attention, stage_index=1, at_start=[20])
    keep = sparse.prune(ctx).keep[0]
    kept = torch.nonzero(keep & image[0]).flatten().tolist()
    assert kept == [8, 9, 10]  # ⌊100·20/576⌋ = 3; recycled 11 is dropped again


def test_sparsevlm_raters_are_fixed_at_stage_zero_and_follow_pruning():
    sparse = SparseVLM(0.5, layers=[0, 1, 2])
    sparse.stages(4)
    rows = torch.tensor([block(2, 8, 6)])
    ctx = context(rows, seed=5)
    raters = sparse.query_rows(ctx)
    # stage 1 on a pruned sequence (image positions 3, 5, 7, 9 dropped): same raters, new positions
    kept = torch.tensor([i for i in range(16) if i not in (3, 5, 7, 9)])
    later = context(rows[:, kept], stage_index=1, input_embeds=ctx.input_embeds, original_index=kept[None])
    assert torch.equal(sparse.query_rows(later), raters[:, kept])
    stranger = context(rows[:, kept], stage_index=1, original_index=kept[None], seed=6)
    with pytest.raises(RuntimeError, match="stage 0"):
        sparse.query_rows(stranger)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sparsevlm_preset_counts_scale_with_the_image_block(preset):
    sparse = SparseVLM(0.5, layers=[0, 1, 2], preset=preset, recycle=False)
    sparse.stages(4)
    n0 = 1152
    image = torch.tensor([block(3, n0, 4)])
    for stage, k in enumerate(PRESETS[preset]):
        ctx = context(image, stage_index=stage, seed=stage, at_start=[n0])
        keep = sparse.prune(ctx).keep
        assert int((keep & ctx.image).sum()) == k * 2 == sparse.layer_counts(n0, 4)[stage + 1]
        kept = set(torch.nonzero(keep[0] & ctx.image[0]).flatten().tolist())
        assert kept == top_set(ctx.attention[0], ctx.image[0], 2 * k)
        image = image & keep
    kept = PRESETS[preset][0] * 100 // 576
    counts = SparseVLM(0.5, layers=[0, 1, 2], preset=preset).layer_counts(100, 4)
    assert counts[1] == kept + recycled_groups(100 - kept)[1]


def test_sparsevlm_recycles_the_most_relevant_pruned_tokens_into_cluster_means():
    sparse = SparseVLM(0.5, layers=[0, 1, 2], tokens=[20, 10, 5])
    sparse.stages(4)
    n_img, dim = 80, 6
    image = torch.tensor([block(2, n_img, 3)])
    attention = torch.zeros(1, 85)
    attention[0, 2:82] = torch.linspace(1.0, 0.01, n_img)  # relevance falls along the block
    kept_count = 20 * n_img // 576  # 2
    n_pruned = n_img - kept_count  # 78 → 24 taken → 3 groups
    taken, groups = recycled_groups(n_pruned)
    assert (taken, groups) == (24, 3)
    hidden = torch.zeros(1, 85, dim)
    hidden[0, :, 5] = 1000.0  # every other token: far away
    centres = torch.tensor([[10.0, 0, 0, 0, 0, 0], [0, 10.0, 0, 0, 0, 0], [0, 0, 10.0, 0, 0, 0]])
    gen = torch.Generator().manual_seed(0)
    chosen = torch.arange(2 + kept_count, 2 + kept_count + taken)  # the 24 most relevant pruned tokens
    members = [chosen[i::3] for i in range(3)]
    for c, m in zip(centres, members):
        hidden[0, m] = c + 0.1 * torch.randn(len(m), dim, generator=gen)
    ctx = context(image, attention=attention, hidden=hidden)
    decision = sparse.prune(ctx)
    assert int((decision.keep & ctx.image).sum()) == kept_count
    (recycled,) = decision.recycled
    assert recycled.shape == (groups, dim)
    expected = torch.stack([hidden[0, m].mean(0) for m in members])
    got = recycled[torch.argsort(recycled[:, :3].argmax(1))]
    torch.testing.assert_close(got, expected)
    assert sparse.layer_counts(n_img, 4)[1] == kept_count + groups


def test_sparsevlm_recycling_is_seeded_and_independent_of_batch_neighbours():
    sparse = SparseVLM(0.5, layers=[0, 1, 2], tokens=[100, 50, 20])
    sparse.stages(4)
    rows = torch.tensor([block(2, 60, 3), block(1, 40, 2, pad=22)])
    both = context(rows, seed=9)
    first = sparse.prune(both).recycled
    again = sparse.prune(context(rows, seed=9)).recycled
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for b in range(2):
        alone = context(
            rows[b : b + 1],
            attention=both.attention[b : b + 1],
            hidden=both.hidden[b : b + 1],
            input_embeds=both.input_embeds[b : b + 1],
        )
        assert torch.equal(sparse.prune(alone).recycled[0], first[b])
        n0 = int(rows[b].sum())
        assert first[b].shape[0] == recycled_groups(n0 - 100 * n0 // 576)[1]


def test_sparsevlm_r_mode_hits_the_layer_averaged_share():
    for ratio in (0.75, 0.5, 0.25, 0.12):
        sparse = SparseVLM(ratio)
        fractions = sparse.stage_fractions(32)
        assert sparse.share(fractions, 32) == pytest.approx(ratio, abs=1e-9)
        assert all(a >= b for a, b in pairwise(fractions))
        assert sparse.equivalent_tokens(2880, 32) / 2880 == pytest.approx(ratio, abs=2e-3)
        entering = SparseVLM(ratio, counting="entering")
        assert sum(entering.layer_counts(2880, 32)) / 32 / 2880 == pytest.approx(ratio, abs=2e-3)
    assert SparseVLM(1.0).stage_fractions(32) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"cannot be reached.*compressor.layers=\["):
        SparseVLM(0.05).stages(32)
    with pytest.raises(ValueError, match=r"do not fit a 4-layer LLM.*compressor.layers=\[0, 1, 2\]"):
        SparseVLM(0.5, layers=[2, 6, 15]).stages(4)
    assert [stage.score_layer for stage in SparseVLM(0.5).stages(4)] == [0, 1, 2]
    assert [stage.score_layer for stage in SparseVLM(0.5).stages(32)] == [2, 6, 15]
    with pytest.raises(ValueError, match="preset=100"):
        SparseVLM(0.5, preset=100)
    with pytest.raises(ValueError, match="needs 3"):
        SparseVLM(0.5, layers=[2, 6])
    assert SparseVLM(0.5).stages(32) == [DecoderStage(2, 3), DecoderStage(6, 7), DecoderStage(15, 16)]


def test_sparsevlm_at_ratio_one_keeps_everything_and_recycles_nothing():
    sparse = SparseVLM(1.0, layers=[0, 1, 2])
    sparse.stages(4)
    ctx = context([block(2, 30, 3)])
    for stage in range(3):
        ctx.stage_index = stage
        decision = sparse.prune(ctx)
        assert decision.keep.all() and decision.recycled is None


# ----------------------------------------------------------------------------------- +GlobalCom²


def segmented(sizes, newlines, text=(2, 3)):
    """A row: text, thumbnail (segment 0), crops 1.. with a newline after each, text."""
    segment = [SEGMENT_TEXT] * text[0]
    for g, n in enumerate(sizes):
        segment += [g] * n
        if g > 0 and newlines:
            segment += [SEGMENT_NEWLINE]
    segment += [SEGMENT_TEXT] * text[1]
    segment = torch.tensor([segment])
    return segment != SEGMENT_TEXT, segment


def test_keep_top_per_group():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3, 0.5, 0.2]])
    group = torch.tensor([[0, 0, 1, 1, -1, 1, 0]])
    keep = keep_top_per_group(scores, group, torch.tensor([[1, 2]]))
    assert keep.tolist() == [[True, False, True, True, True, False, False]]  # tie 0.5/0.5 → lower position


@pytest.mark.parametrize("newlines", ["keep", "prune"])
def test_fastv_globalcom2_keeps_floor_n_r_per_segment_by_attention(newlines):
    ratio = 0.3
    sizes = [16, 12, 9, 16]
    budgets = torch.tensor([[ratio, 0.45, 0.1, 0.35]], dtype=torch.float64)
    image, segment = segmented(sizes, newlines=True)
    hybrid = FastVGlobalCom2(ratio, layer=1, newlines=newlines)
    hybrid.stages(4)
    ctx = context(image, segment=segment, budgets=budgets, seed=4)
    keep = hybrid.prune(ctx).keep
    assert keep[~image].all()
    for g, n in enumerate(sizes):
        in_segment = segment[0] == g
        expected = math.floor(n * float(budgets[0, g]))
        kept = set(torch.nonzero(keep[0] & in_segment).flatten().tolist())
        assert kept == top_set(ctx.attention[0], in_segment, expected)
    nl = segment[0] == SEGMENT_NEWLINE
    kept_nl = int((keep[0] & nl).sum())
    assert kept_nl == (3 if newlines == "keep" else math.floor(3 * ratio))
    assert FastVGlobalCom2(1.0, layer=1).prune(ctx).keep.all()
    no_budget = context(image, segment=segment, budgets=budgets.clone().index_fill_(1, torch.tensor([3]), math.nan))
    assert hybrid.prune(no_budget).keep[0][segment[0] == 3].all()
    assert hybrid.positions == "keep" and hybrid.stages(4) == [DecoderStage(0, 1)]


def test_hybrid_select_keeps_every_packed_token_and_globalcom2s_budgets():
    layouts = [AnyResLayout((40, 100), (1, 2), 4), AnyResLayout((100, 60), (2, 1), 4)]
    gen = torch.Generator().manual_seed(2)
    scores = [torch.randn(layout.num_views, 16, generator=gen) * 5 for layout in layouts]
    hybrid = FastVGlobalCom2(0.25)
    selection = hybrid.select(scores, layouts)
    packed = NoCompression().select(scores, layouts)
    assert torch.equal(selection.token_sources, packed.token_sources)
    assert torch.equal(selection.num_tokens, packed.num_tokens)
    reference = GlobalCom2(0.25).select(scores, layouts).crop_budgets
    torch.testing.assert_close(selection.crop_budgets, reference, equal_nan=True)
    assert not torch.allclose(reference[:, :2], torch.full((2, 2), 0.25, dtype=torch.float64))
    assert hybrid.score_request.kind == "cls_logit"


def test_sparsevlm_globalcom2_scales_its_stage_fractions_per_segment():
    ratio = 0.25
    tokens = [300, 150, 60]
    hybrid = SparseVLMGlobalCom2(ratio, layers=[0, 1, 2], tokens=tokens)
    hybrid.stages(4)
    sizes = [36, 30, 24]
    budgets = torch.tensor([[ratio, 0.4, 0.1]], dtype=torch.float64)
    image, segment = segmented(sizes, newlines=True)
    ctx = context(image, segment=segment, budgets=budgets, seed=8)
    hybrid.query_rows(ctx)
    decision = hybrid.prune(ctx)
    kappa = [t / 576 for t in tokens]
    for g, n in enumerate(sizes):
        in_segment = segment[0] == g
        expected = math.floor(n * min(1.0, float(budgets[0, g]) * kappa[0] / ratio))
        assert set(torch.nonzero(decision.keep[0] & in_segment).flatten().tolist()) == top_set(
            ctx.attention[0], in_segment, expected
        )
    pruned = int((image & ~decision.keep).sum())
    assert decision.recycled[0].shape[0] == recycled_groups(pruned)[1]

    # stage 1 on the pruned sequence plus the recycled tokens: views from their start sizes, recycled κ1/κ0
    keep = decision.keep[0]
    n_rec = decision.recycled[0].shape[0]
    seg1 = torch.cat([segment[0][keep], torch.full((n_rec,), SEGMENT_RECYCLED)])[None]
    idx1 = torch.cat([torch.nonzero(keep).flatten(), torch.full((n_rec,), -1)])[None]
    ctx1 = context(
        seg1 != SEGMENT_TEXT,
        segment=seg1,
        budgets=budgets,
        stage_index=1,
        original_index=idx1,
        input_embeds=ctx.input_embeds,
        seed=9,
    )
    keep1 = hybrid.prune(ctx1).keep
    for g, n in enumerate(sizes):
        expected = math.floor(n * min(1.0, float(budgets[0, g]) * kappa[1] / ratio))
        assert int((keep1[0] & (seg1[0] == g)).sum()) == expected
    assert int((keep1[0] & (seg1[0] == SEGMENT_RECYCLED)).sum()) == math.floor(n_rec * kappa[1] / kappa[0])
    assert (keep1[0] & (seg1[0] == SEGMENT_NEWLINE)).sum() == (seg1[0] == SEGMENT_NEWLINE).sum()

    full = SparseVLMGlobalCom2(1.0, layers=[0, 1, 2])
    full.stages(4)
    assert full.prune(ctx).keep.all()


# --------------------------------------------------- token accounting on LLaVA-NeXT-7B's geometry (32 layers)


def test_sparsevlm_authors_counting_reproduces_their_preset_names_and_counts_at_r_0_1():
    """Their "Equal Tokens" count layer l after its drop: 64.8 / 96.9 / 128.6 / 192.0 for presets 64..192."""
    authors = [round(SparseVLM(0.5, preset=p).equivalent_tokens(576, 32), 1) for p in (64, 96, 128, 192)]
    entering = [
        round(SparseVLM(0.5, preset=p, counting="entering").equivalent_tokens(576, 32), 1) for p in (64, 96, 128, 192)
    ]
    assert authors == [64.8, 96.9, 128.6, 192.0]
    assert entering == [82.2, 114.1, 145.4, 206.5]
    kept = {
        c: [math.floor(2880 * f) for f in SparseVLM(0.1, budget_of=2880, counting=c).stage_fractions(32)]
        for c in ("authors", "entering")
    }
    assert kept == {"authors": [244, 111, 63], "entering": [16, 7, 4]}
    sparse = SparseVLM(0.1, budget_of=2880, num_layers=32)
    assert sparse.params()["counting"] == "authors"
    info = sparse.schedule_info(32)
    assert info["layer_share_authors"] == pytest.approx(0.1, abs=1e-9)
    assert info["layer_share_entering"] == pytest.approx(0.1305, abs=1e-4)  # the same schedule counted entering


def experiment_compressor(experiment: str, method: str, ratio: float):
    from gc2bench.config import build_compressor, compose_run_config

    return build_compressor(
        compose_run_config([f"experiment={experiment}", f"compressor={method}", f"ratio={ratio}"], check=False)
    )


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.1])
def test_pdrop_experiment_schedules_reach_r_within_one_percent_on_32_layers(ratio):
    pdrop = experiment_compressor("aaai_table1_llm", "pdrop", ratio)
    counts = pdrop.layer_counts(2880, 32)
    assert sum(counts) / 32 / 2880 == pytest.approx(ratio, rel=0.01)
    assert pdrop.layers == ([8, 16, 24] if ratio == 0.5 else [2, 8, 16])
    assert pdrop.params()["layers_by_ratio"] == {0.5: [8, 16, 24], 0.25: [2, 8, 16], 0.1: [2, 8, 16]}
    with pytest.raises(ValueError, match="cannot be reached") if ratio < 0.5 else contextlib.nullcontext():
        PDrop(ratio, num_layers=32)  # the default [8, 16, 24] keeps its clear error


def test_pdrop_layers_by_ratio_names_a_missing_ratio():
    with pytest.raises(ValueError, match=r"not for ratio=0.3"):
        PDrop(0.3, layers={0.5: [8, 16, 24], 0.1: [2, 8, 16]})


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25, 0.1])
def test_fastv_layer_average_share_equals_r_within_one_percent_on_32_layers(ratio):
    aaai = FastV(ratio, budget_of=2880, share="layer_average")
    assert sum(aaai.layer_counts(2880, 32)) / 32 / 2880 == pytest.approx(ratio, rel=0.01)
    assert aaai.schedule_info(32)["layer_share"] == pytest.approx(ratio, abs=1e-12)
    kept = FastV(ratio, budget_of=2880)
    assert kept.schedule_info(32)["layer_share"] == pytest.approx((2 + 30 * ratio) / 32, abs=1e-12)
    for experiment in ("aaai_table1_llm", "tcsvt_table1_llm"):
        params = experiment_compressor(experiment, "fastv", ratio).params()
        assert (params["share"], params["decode"], params["budget_of"]) == ("kept", "static", 2880)


def test_fastv_layer_average_share_below_its_floor_raises():
    with pytest.raises(ValueError, match=r"ratio=0.05 cannot be the layer-averaged share.*2/32"):
        FastV(0.05, share="layer_average").stages(32)
    with pytest.raises(ValueError, match="share='mean' is not one of kept, layer_average"):
        FastV(0.5, share="mean")
    with pytest.raises(ValueError, match="decode='dynamic' is not one of reselect, static"):
        FastV(0.5, decode="dynamic")


def rank_context(n_image, rank, *, queries=4, stage_index=0, seed=0, input_embeds=None):
    """One row: 2 text, ``n_image`` image tokens, 3 text; query attention of the given rank over the image."""
    image = torch.tensor([block(2, n_image, 3)])
    gen = torch.Generator().manual_seed(seed)
    basis = torch.rand(rank, image.shape[1], generator=gen)
    mix = torch.rand(queries, rank, generator=gen)
    ctx = context(image, seed=seed, input_embeds=input_embeds)
    ctx.query_attention = (mix @ basis)[None]
    return ctx


def test_sparsevlm_v1_keeps_rank_times_scale_plus_bias_capped_at_n_minus_one():
    v1 = SparseVLM(0.5, version="v1", scale=3.0, bias=1.0, recycle=False, layers=[0])
    v1.stages(4)
    assert v1.wants_query_attention and not SparseVLM(0.5).wants_query_attention
    ctx = rank_context(20, 2)
    assert int(v1.prune(ctx).keep[0][ctx.image[0]].sum()) == 7  # int(2 x 3 + 1)
    ctx = rank_context(20, 4)
    assert int(v1.prune(ctx).keep[0][ctx.image[0]].sum()) == 13  # int(4 x 3 + 1)
    big = SparseVLM(0.5, version="v1", scale=30.0, recycle=False, layers=[0])
    big.stages(4)
    assert int(big.prune(rank_context(20, 2)).keep[0][ctx.image[0]].sum()) == 19  # min(60, n - 1)
    full = rank_context(3, 3)  # rank = n: the stage does not prune
    assert bool(big.prune(full).keep.all())


def test_sparsevlm_v1_r_mode_scales_by_the_first_stage_rank():
    v1 = SparseVLM(0.5, version="v1", recycle=False, layers=[0, 1])
    v1.stages(4)
    kappa = v1.stage_fractions(4)
    assert kappa[0] == kappa[1] and v1.share(kappa, 4) == pytest.approx(0.5, abs=1e-12)
    first = rank_context(40, 3)
    kept = int(v1.prune(first).keep[0][first.image[0]].sum())
    assert kept == math.floor(40 * kappa[0])
    later = rank_context(kept, 2, stage_index=1, input_embeds=first.input_embeds)
    later.stage_index, later.image_tokens_at_start = 1, torch.tensor([40])
    assert int(v1.prune(later).keep[0][later.image[0]].sum()) == min(2 * kept // 3, kept - 1)
    with pytest.raises(ValueError, match="preset/tokens are v1.5's schedules"):
        SparseVLM(0.5, version="v1", preset=64)
    with pytest.raises(ValueError, match="scale/bias are version=v1's rule"):
        SparseVLM(0.5, scale=2.0)
    assert SparseVLM(0.5, version="v1").stages(32)[-1] == DecoderStage(19, 20)
    assert SparseVLM(0.1, version="v1", budget_of=2880).equivalent_tokens(2880, 32) / 2880 == pytest.approx(
        0.1, rel=0.01
    )


def test_fastv_defaults_to_the_authors_reselecting_decode_and_records_it():
    from hydra.utils import instantiate

    from gc2bench.config import compose_run_config

    cfg = compose_run_config(["compressor=fastv", "ratio=0.25"], check=False)
    static = compose_run_config(["compressor=fastv", "ratio=0.25", "compressor.decode=static"], check=False)
    assert instantiate(cfg.compressor).params()["decode"] == "reselect"
    assert instantiate(static.compressor).params()["decode"] == "static"
    assert "re-ranks" in instantiate(cfg.compressor).params()["convention"]


def test_experiments_choose_their_sparsevlm_version_and_record_it():
    tcsvt = experiment_compressor("tcsvt_table1_llm", "sparsevlm", 0.1).params()
    aaai = experiment_compressor("aaai_table1_llm", "sparsevlm", 0.1).params()
    assert (tcsvt["version"], tcsvt["counting"], tcsvt["budget_of"]) == ("v1", "authors", 2880)
    assert (aaai["version"], aaai["counting"], aaai["budget_of"]) == ("v1.5", "authors", 2880)
