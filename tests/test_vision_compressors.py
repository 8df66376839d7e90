"""FasterVLM and the random control: per-view accounting, ranking, order, seeding."""

import pytest
import torch

from gc2bench.compressors.fastervlm import FasterVLM
from gc2bench.compressors.random import RandomKeep
from gc2bench.layout import NEWLINE, anyres_layout

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIZES = [(480, 640), (640, 480), (336, 336), (1, 1), (1, 4000), (4000, 1), (55, 176), (1000, 1500)]


def layouts():
    return [anyres_layout(size, PINPOINTS, 336, 24) for size in SIZES]


def random_scores(layout, seed):
    return torch.randn(layout.num_views, layout.tokens_per_view, generator=torch.Generator().manual_seed(seed))


def per_view_counts(sources, n_tok):
    tokens = sources[sources != NEWLINE]
    return torch.bincount(tokens // n_tok).tolist()


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_fastervlm_unpadded_counts_and_ranking(ratio):
    items = layouts()
    scores = [random_scores(layout, i) for i, layout in enumerate(items)]
    selection = FasterVLM(ratio).select(scores, items)
    for layout, score, kept in zip(items, scores, selection.per_image()):
        packed = layout.packed_sources
        assert (kept == NEWLINE).sum() == (packed == NEWLINE).sum()  # newlines all kept
        position = {int(s): i for i, s in enumerate(packed.tolist())}
        assert [position[int(s)] for s in kept if s >= 0] == sorted(position[int(s)] for s in kept if s >= 0)
        candidates = packed[packed >= 0]
        for view in range(layout.num_views):
            mine = candidates[candidates // 576 == view]
            quota = round(ratio * len(mine))
            chosen = set(kept[(kept >= 0) & (kept // 576 == view)].tolist())
            best = sorted(mine.tolist(), key=lambda s: (-float(score.flatten()[s]), s))[:quota]
            assert chosen == set(best), (layout.image_size, view)


def test_fastervlm_authors_mode_keeps_round_r_576_per_view_without_newlines():
    items = layouts()
    selection = FasterVLM(0.1, unpad=False).select([random_scores(item, 0) for item in items], items)
    for layout, kept in zip(items, selection.per_image()):
        assert NEWLINE not in kept.tolist()
        assert per_view_counts(kept, 576) == [58] * layout.num_views
        assert len(kept) == 58 * layout.num_views


def test_fastervlm_asks_for_penultimate_post_softmax_cls_attention():
    request = FasterVLM(0.5).score_request
    assert (request.kind, request.layer) == ("cls_softmax", -2)


def test_fastervlm_ties_go_to_the_lower_index():
    layout = anyres_layout((336, 336), PINPOINTS, 336, 24)
    kept = FasterVLM(0.25).select([torch.zeros(layout.num_views, 576)], [layout]).per_image()[0]
    assert kept[:144].tolist() == list(range(144))


def test_random_control_matches_fastervlm_accounting_and_is_seeded():
    items = layouts()
    none_scores = [None] * len(items)
    fast = FasterVLM(0.25).select([random_scores(item, 0) for item in items], items).per_image()
    first = RandomKeep(0.25, seed=3).select(none_scores, items).per_image()
    again = RandomKeep(0.25, seed=3).select(none_scores, items).per_image()
    other = RandomKeep(0.25, seed=4).select(none_scores, items).per_image()
    for a, b, c, f in zip(first, again, other, fast):
        assert torch.equal(a, b)
        assert per_view_counts(a, 576) == per_view_counts(f, 576)
        if len(a) > 20:
            assert not torch.equal(a, c)
    assert RandomKeep(0.25).score_request.kind == "none"


@pytest.mark.parametrize("ratio", [0, 1.5, "abc", float("nan")])
def test_bad_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="ratio="):
        FasterVLM(ratio)
    with pytest.raises(ValueError, match="ratio="):
        RandomKeep(ratio)
