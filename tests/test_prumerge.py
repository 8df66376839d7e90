"""PruMerge (compressor=prumerge): per-view counts, the merge against a loop-by-loop hand computation,
the IQR rule against numpy, PruMerge+ sampling, R = 1 ≡ no merging, and runs through run.py / inspect."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gc2bench.compressors.base import MergeInputs
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.prumerge import PruMerge, iqr_upper_fence
from gc2bench.config import ConfigError, compose_run_config
from gc2bench.layout import NEWLINE, VIEW_SUMMARY, AnyResLayout


def image(width, height, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def synthetic(layout, seed, key_dim=6, feature_dim=5):
    """CLS-attention-like scores (softmax rows), keys and features for every view of ``layout``."""
    g = torch.Generator().manual_seed(seed)
    views, n = layout.num_views, layout.tokens_per_view
    scores = torch.randn(views, n + 1, generator=g).mul(2).softmax(-1)[:, 1:]
    keys = torch.randn(views, n, key_dim, generator=g)
    features = torch.randn(views, n, feature_dim, generator=g)
    return scores, keys, features


def candidates_of(layout, view):
    """Patch indices of ``view`` that survive unpadding, in raster order."""
    n = layout.tokens_per_view
    return [s % n for s in layout.packed_sources.tolist() if s >= 0 and s // n == view]


def hand_prumerge(layout, scores, keys, features, ratio, neighbors=32, pool="all", include_center=True, extra=True):
    """PruMerge per view written out token by token (float64): emitted sources and features, score order."""
    n = layout.tokens_per_view
    sources, rows = [], []
    for view in range(layout.num_views):
        cands = candidates_of(layout, view)
        k = math.floor(len(cands) * ratio)
        kept = sorted(cands, key=lambda p: (-float(scores[view, p]), p))[:k]
        pruned = [p for p in cands if p not in kept]
        for p in kept:
            others = [j for j in cands if j != p and (pool == "all" or j in pruned)]
            similarity = {
                j: float(F.cosine_similarity(keys[view, p].double(), keys[view, j].double(), dim=0)) for j in others
            }
            nearest = sorted(others, key=lambda j: (-similarity[j], j))[:neighbors]
            merged = (
                features[view, p].double().clone()
                if include_center
                else torch.zeros(features.shape[-1], dtype=torch.float64)
            )
            for j in nearest:
                merged += float(scores[view, j]) * features[view, j].double()
            sources.append(view * n + p)
            rows.append(merged)
        if extra and pruned:
            summary = torch.zeros(features.shape[-1], dtype=torch.float64)
            for j in pruned:
                summary += float(scores[view, j]) * features[view, j].double()
            sources.append(VIEW_SUMMARY - view)
            rows.append(summary)
    return sources, torch.stack(rows)


# -- the merge, by hand ---------------------------------------------------------------------------

LAYOUTS = {
    "square": AnyResLayout((56, 56), (1, 1), 4, 56),
    "wide, unpadded rows": AnyResLayout((30, 112), (1, 2), 4, 56),
    "tall, unpadded columns": AnyResLayout((112, 40), (2, 1), 4, 56),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize(
    "ratio,neighbors,pool,include_center,extra",
    [
        (0.25, 32, "all", True, True),  # the authors' code (32 > pool: every other candidate)
        (0.5, 3, "all", True, True),
        (0.5, 3, "pruned", False, False),  # the paper's update, pruned-only pool, no summary token
        (0.75, 2, "pruned", True, True),
    ],
)
def test_merged_features_equal_a_hand_computation(name, ratio, neighbors, pool, include_center, extra):
    layout = LAYOUTS[name]
    scores, keys, features = synthetic(layout, seed=len(name))
    compressor = PruMerge(
        ratio, neighbors=neighbors, neighbor_pool=pool, include_center=include_center, extra_token=extra
    )
    selection = compressor.select([scores], [layout], MergeInputs([keys], [features]))
    expected_sources, expected_rows = hand_prumerge(
        layout, scores, keys, features, ratio, neighbors, pool, include_center, extra
    )
    assert selection.per_image()[0].tolist() == expected_sources
    torch.testing.assert_close(selection.replacement_features[0].double(), expected_rows, rtol=1e-5, atol=1e-6)


def test_spatial_order_keeps_newlines_and_puts_each_summary_after_its_view():
    layout = LAYOUTS["wide, unpadded rows"]
    scores, keys, features = synthetic(layout, seed=3)
    score_order = PruMerge(0.5).select([scores], [layout], MergeInputs([keys], [features]))
    spatial = PruMerge(0.5, order="spatial").select([scores], [layout], MergeInputs([keys], [features]))
    packed = layout.packed_sources.tolist()
    kept = set(s for s in score_order.per_image()[0].tolist() if s >= 0)
    emitted = spatial.per_image()[0].tolist()
    n = layout.tokens_per_view
    expected = []
    for index, source in enumerate(packed):
        if source == NEWLINE or source in kept:
            expected.append(source)
        if source >= 0 and not any(s >= 0 and s // n == source // n for s in packed[index + 1 :]):
            expected.append(VIEW_SUMMARY - source // n)  # the view's last candidate: its summary
    assert emitted == expected
    # Same tokens, same merged features, different order.
    by_source = dict(zip(score_order.per_image()[0].tolist(), score_order.replacement_features[0]))
    for source, row in zip(emitted, spatial.replacement_features[0]):
        if source != NEWLINE:
            assert torch.equal(row, by_source[source])


def test_nothing_pruned_means_nothing_merged():
    layout = LAYOUTS["wide, unpadded rows"]
    scores, keys, features = synthetic(layout, seed=5)
    selection = PruMerge(1.0, neighbor_pool="pruned", order="spatial").select(
        [scores], [layout], MergeInputs([keys], [features])
    )
    sources = selection.per_image()[0]
    assert sources.tolist() == layout.packed_sources.tolist()  # no summary tokens either
    patches = sources >= 0
    assert torch.equal(selection.replacement_features[0][patches], features.flatten(0, 1)[sources[patches]])


# -- counts --------------------------------------------------------------------------------------


def test_selection_without_merge_inputs_has_no_replacement_features():
    layout = LAYOUTS["square"]
    scores, _, _ = synthetic(layout, seed=0)
    assert PruMerge(0.5).select([scores], [layout]).replacement_features is None


@pytest.fixture(scope="module")
def tiny_adapter_with(tiny_path):
    from gc2bench.models.llava_next import LlavaNextAdapter

    adapter = LlavaNextAdapter(str(tiny_path), NoCompression(), name="tiny", dtype="float32", device="cpu")

    def use(compressor):
        adapter.compressor = compressor
        return adapter

    return use


IMAGES = [image(120, 80, 0), image(40, 200, 1), image(300, 300, 2), image(60, 170, 3)]


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_kept_counts_per_view_on_the_tiny_model(tiny_adapter_with, ratio):
    adapter = tiny_adapter_with(PruMerge(ratio))
    results = adapter.generate(
        ["What is it?"] * len(IMAGES), [[img] for img in IMAGES], max_new_tokens=2, do_sample=False
    )
    for result, (layout, sources) in zip(results, adapter.last_selection):
        n = layout.tokens_per_view
        expected_per_view = []
        for view in range(layout.num_views):
            candidates = len(candidates_of(layout, view))
            kept = math.floor(candidates * ratio)
            summary = int(kept < candidates)
            expected_per_view.append(kept + summary)
            assert (sources == VIEW_SUMMARY - view).sum() == summary
            assert ((sources >= 0) & (sources // n == view)).sum() == kept
        assert result.stats.kept_per_view == [expected_per_view]
        assert result.stats.visual_tokens_kept == len(sources) == sum(expected_per_view)  # score order: no newlines
        assert NEWLINE not in sources.tolist()
        assert result.stats.ratio_convention == adapter.compressor.params()["convention"]


def test_r1_without_merging_generates_like_no_compression(tiny_adapter_with):
    texts, images = ["What is it?", "Describe it."], [[IMAGES[0]], [IMAGES[1]]]
    reference = tiny_adapter_with(NoCompression()).generate(
        texts, images, max_new_tokens=5, do_sample=False, output_scores=True
    )
    adapter = tiny_adapter_with(PruMerge(1.0, neighbor_pool="pruned", order="spatial"))
    merged = adapter.generate(texts, images, max_new_tokens=5, do_sample=False, output_scores=True)
    for a, b in zip(reference, merged):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
        assert a.stats.visual_tokens_kept == b.stats.visual_tokens_kept


def test_merging_changes_the_llm_input(tiny_adapter_with):
    """With the authors' defaults at R = 1 every token still absorbs its neighbours: the prefill differs."""
    texts, images = ["What is it?"], [[IMAGES[0]]]
    reference = tiny_adapter_with(NoCompression()).generate(
        texts, images, max_new_tokens=1, do_sample=False, output_scores=True
    )
    merged = tiny_adapter_with(PruMerge(1.0, order="spatial")).generate(
        texts, images, max_new_tokens=1, do_sample=False, output_scores=True
    )
    assert merged[0].stats.visual_tokens_kept == reference[0].stats.visual_tokens_kept
    assert not torch.allclose(reference[0].scores, merged[0].scores)


# -- the IQR rule ---------------------------------------------------------------------------------


def numpy_fence(values):
    """The authors' outlier_dectection bound, in numpy float32."""
    array = np.asarray(values, dtype=np.float32)
    q1, q3 = np.percentile(array, 25), np.percentile(array, 75)
    return q3 + 1.5 * (q3 - q1)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 16, 49, 576])
def test_iqr_fence_equals_numpy(length):
    values = torch.rand(length, generator=torch.Generator().manual_seed(length)) ** 3
    fence = iqr_upper_fence(values, torch.zeros(length, dtype=torch.long), 1)
    assert fence.item() == float(numpy_fence(values.numpy()))


def test_iqr_picks_the_outliers_of_a_constructed_score_vector():
    layout = AnyResLayout((56, 56), (1, 1), 4, 56)  # 2 views of 16 tokens, nothing unpadded
    base = torch.linspace(0.02, 0.03, 16)
    spikes = {3: 0.30, 9: 0.21, 14: 0.12}
    view0 = base.clone()
    for p, value in spikes.items():
        view0[p] = value
    view1 = torch.linspace(0.01, 0.05, 16)  # uniform: no outlier
    scores = torch.stack([view0, view1])
    fence = numpy_fence(view0.numpy())
    assert sorted(np.flatnonzero(view0.numpy() > fence).tolist()) == sorted(spikes)  # the construction is right
    assert not (view1.numpy() > numpy_fence(view1.numpy())).any()

    kept = PruMerge(0.5, adaptive=True).select([scores], [layout]).per_image()[0].tolist()
    assert kept == [3, 9, 14, VIEW_SUMMARY, VIEW_SUMMARY - 1]  # descending score, then the summaries

    # One IQR over both views (the authors' batch-wide statistic): c outliers of 32, k_v = floor(16·c/32).
    both = torch.cat([view0, view1]).numpy()
    count = int((both > numpy_fence(both)).sum())
    kept = PruMerge(0.5, adaptive=True, iqr_scope="image").select([scores], [layout]).per_image()[0]
    per_view = math.floor(16 * (count / 32))
    assert ((kept >= 0) & (kept < 16)).sum() == per_view and (kept >= 16).sum() == per_view


# -- PruMerge+ ------------------------------------------------------------------------------------


def test_plus_adds_every_s_th_candidate_after_the_top_k():
    layout = AnyResLayout((112, 112), (1, 1), 8, 112)  # N = 64, nothing unpadded
    scores, keys, features = synthetic(layout, seed=7)
    selection = PruMerge(0.1, plus=True).select([scores], [layout], MergeInputs([keys], [features]))
    emitted = selection.per_image()[0].tolist()
    k = math.floor(64 * 0.1)  # 6
    stride = math.floor(math.floor(1 / 0.1) / 3)  # 3: the authors' int(int(1/r)/3)
    sampled = 0
    for view in range(2):
        top = sorted(range(64), key=lambda p: (-float(scores[view, p]), p))[:k]
        samples = [p for p in range(0, 63, stride) if p not in top]  # arange(0, N - 1, s), minus kept
        expected = [view * 64 + p for p in top + samples] + [VIEW_SUMMARY - view]
        mine = [s for s in emitted if (s >= 0 and s // 64 == view) or s == VIEW_SUMMARY - view]
        assert mine == expected
        sampled += len(samples)
    plain = PruMerge(0.1).select([scores], [layout]).per_image()[0]
    assert len(emitted) == len(plain) + sampled
    # The samples are merged like the top-k tokens.
    all_sources, rows = hand_prumerge(layout, scores, keys, features, 1.0, extra=False)  # every token merged
    sample = samples[0] + 64
    torch.testing.assert_close(
        selection.replacement_features[0][emitted.index(sample)].double(),
        rows[all_sources.index(sample)],
        rtol=1e-5,
        atol=1e-6,
    )


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("score", "cls_logit"),
        ("neighbor_pool", "nearest"),
        ("order", "random"),
        ("iqr_scope", "batch"),
        ("neighbors", -1),
        ("plus", "yes"),
        ("ratio", 0.0),
    ],
)
def test_bad_options_name_the_value(option, value):
    with pytest.raises(ValueError, match=f"{option}={value!r}" if option != "ratio" else "ratio=0.0"):
        PruMerge(**{option: value})


def test_params_record_the_convention():
    params = PruMerge(0.1, plus=True).params()
    assert params["ratio"] == 0.1 and params["plus"] is True
    assert params["convention"].startswith("PruMerge+ per view") and "floor(R·n_v)" in params["convention"]
    assert PruMerge(0.1).score_request.merge_inputs and PruMerge(0.1).score_request.kind == "cls_softmax_fullwidth"


def compose_run(tmp_path, *overrides):
    return compose_run_config([f"results_dir={tmp_path}", "suite.limit=1", "tasks=[pope]", *overrides], check=False)


def test_runs_through_run_py_and_records_done(tmp_path, cache_dir):
    from gc2bench.run import run

    records = run(compose_run(tmp_path, "model=tiny", "compressor=prumerge", "ratio=0.1", "compressor.plus=true"))
    assert [r["status"] for r in records] == ["done"]
    record = records[0]
    assert record["compressor"]["name"] == "prumerge" and record["compressor"]["params"]["plus"] is True
    # Per view of 16: 1 top token, the stride-3 samples (<= 6 with the top one) and a summary: under half.
    assert record["tokens"]["visual_tokens_kept"]["mean"] < 0.5 * record["tokens"]["visual_tokens_before"]["mean"]


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.17])
def test_plus_refuses_ratios_whose_stride_keeps_everything(ratio):
    with pytest.raises(ValueError, match=f"plus=true with ratio={ratio} samples every candidate"):
        PruMerge(ratio, plus=True)
    assert PruMerge(ratio, plus=True, adaptive=True).plus  # the adaptive rule sets its own r


def test_adaptive_records_no_ratio_so_a_ratio_sweep_runs_it_once():
    assert PruMerge(0.5, adaptive=True).params()["ratio"] == PruMerge(0.1, adaptive=True).params()["ratio"] == 1.0
    assert PruMerge(0.5, adaptive=True).params() == PruMerge(0.1, adaptive=True).params()
    assert PruMerge(0.5, adaptive=True).params()["variant"] == "adaptive" and "variant" not in PruMerge(0.5).params()


def test_onevision_needs_the_cosine_score_and_names_it(tmp_path, cache_dir):
    from gc2bench.run import run

    with pytest.raises(ConfigError, match="compressor.score=cosine"):
        run(compose_run(tmp_path, "model=tiny_onevision", "compressor=prumerge"))
    with pytest.raises(ConfigError, match="compressor.unpad=true"):
        run(
            compose_run(
                tmp_path,
                "model=tiny_onevision",
                "compressor=prumerge",
                "compressor.score=cosine",
                "compressor.unpad=false",
            )
        )


def test_onevision_with_cosine_counts_per_view_on_a_downsampled_grid(cache_dir):
    from gc2bench.models.onevision import LlavaOneVisionAdapter
    from gc2bench.models.tiny_onevision import tiny_onevision_path

    adapter = LlavaOneVisionAdapter(
        str(tiny_onevision_path(seed=0, cache_dir=cache_dir)),
        PruMerge(0.25, score="cosine"),
        dtype="float32",
        device="cpu",
    )
    result = adapter.generate(["What is it?"], [[image(300, 300, 6)]], max_new_tokens=2, do_sample=False)[0]
    layout, sources = adapter.last_selection[0]
    assert layout.downsampled
    n = layout.tokens_per_view
    per_view = []
    for view in range(layout.num_views):
        candidates = int(((layout.packed_sources >= 0) & (layout.packed_sources // n == view)).sum())
        kept = math.floor(candidates * 0.25)
        per_view.append(kept + int(kept < candidates))
    assert result.stats.kept_per_view == [per_view]


def test_inspect_reports_per_view_counts(capsys, cache_dir, tmp_path):
    from gc2bench.cli import main

    path = tmp_path / "photo.png"
    image(150, 90, 0).save(path)
    assert (
        main(
            [
                "inspect",
                f"image={path}",
                "compressor=prumerge",
                "ratio=0.5",
                f"viz={tmp_path / 'kept.png'}",
                "max_new_tokens=2",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["visual_tokens_kept"] == sum(report["kept_per_view"]) and report["newline_tokens"] == 0
    assert (tmp_path / "kept.png").exists()


def test_fullwidth_cls_attention_is_the_authors_formula_on_hooked_projections(tiny_adapter):
    """The authors hook q_proj / k_proj of the last layer: softmax(q_CLS·kᵀ·C^-1/2) over all keys, CLS dropped."""
    from gc2bench.compressors.base import ScoreRequest

    image = Image.fromarray((np.random.RandomState(3).rand(70, 150, 3) * 255).astype("uint8"))
    inputs = tiny_adapter.processor(images=[image], text=[tiny_adapter.prompt("?", 1)], return_tensors="pt")
    layout = tiny_adapter.layouts(inputs)[0]
    pixels = inputs["pixel_values"][0][: layout.num_views].float()
    from gc2bench.models.llava_next import clip_encoder_layers

    attention = clip_encoder_layers(tiny_adapter.model.model.vision_tower)[-1].self_attn
    captured = {}
    handles = [
        attention.q_proj.register_forward_hook(lambda m, a, out: captured.setdefault("q", out)),
        attention.k_proj.register_forward_hook(lambda m, a, out: captured.setdefault("k", out)),
    ]
    try:
        with torch.no_grad():
            tiny_adapter.model.model.vision_tower(pixels)
    finally:
        for handle in handles:
            handle.remove()
    q, k = captured["q"][:, :1], captured["k"]
    expected = ((q @ k.transpose(-1, -2)) * k.shape[-1] ** -0.5).softmax(dim=-1)[:, 0, 1:]
    request = ScoreRequest("cls_softmax_fullwidth", -1, merge_inputs=True)
    with torch.no_grad():
        _, scores, keys, _ = tiny_adapter.encode_views_for_merging(pixels, request, [layout])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(keys, k[:, 1:], rtol=1e-5, atol=1e-6)


def test_a_score_layer_outside_the_tower_is_a_config_error_before_any_sample(tmp_path, cache_dir):
    from gc2bench.config import ConfigError
    from gc2bench.run import run

    with pytest.raises(ConfigError, match=r"compressor.layer=50 is out of range: tiny's vision tower has 3 layers"):
        run(compose_run(tmp_path, "model=tiny", "compressor=prumerge", "compressor.layer=50"))
