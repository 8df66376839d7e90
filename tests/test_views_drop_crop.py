"""The AAAI paper's analysis compressors: views (Fig. 2: thumbnail only / crops only) and drop_crop
(Fig. 3: drop the most / least important crop), as pure selections, through run.py's recipe, and in a sweep."""

import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from test_sweep import compose_config, run_py

from gc2bench.compressors.drop_crop import DropCrop
from gc2bench.compressors.views import ViewsOnly
from gc2bench.layout import NEWLINE, AnyResLayout, OneVisionLayout, anyres_layout, select_grid
from gc2bench.models.tiny import TINY_SPEC
from gc2bench.models.tiny_onevision import TINY_ONEVISION_SPEC
from gc2bench.results.records import iter_records
from gc2bench.run import run

from conftest import REPO

LLAVA_PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def tiny(h, w):
    return anyres_layout((h, w), TINY_SPEC["grid_pinpoints"], 56, 4)


def llava(h, w):
    return anyres_layout((h, w), LLAVA_PINS, 336, 24)


def onevision(h, w):
    grid = select_grid((h, w), TINY_ONEVISION_SPEC["grid_pinpoints"], 56)
    return OneVisionLayout((h, w), grid, 4, 56, 9)


LAYOUTS = {
    "tiny 2x2": tiny(100, 100),
    "tiny 1x2 wide": tiny(60, 120),
    "tiny 3x1 tall": tiny(300, 90),
    "tiny 1x3": tiny(40, 200),
    "tiny 1x3 barely padded": tiny(60, 150),
    "llava 2x2": llava(672, 500),
    "llava 3x1 tall": llava(1000, 300),
    "llava 1x1": AnyResLayout((336, 400), (1, 1), 24, 336),
    "llava 3x4": AnyResLayout((900, 1300), (3, 4), 24, 336),
    "onevision 1x1": onevision(50, 56),
    "onevision 2x3": onevision(112, 160),
    "onevision 6x6 downsampled": onevision(336, 330),
    "onevision 5x2": onevision(280, 100),
}


def scores_for(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.num_views, layout.tokens_per_view, generator=g)


def oracle_dropped(thumb, layout, which):
    """The crop (row-major index) whose thumbnail region has the highest / lowest summed score, by explicit loops:
    region (i, j) = thumbnail rows [i·h, (i+1)·h), columns [j·w, (j+1)·w) (h = pps // rows, ≥ 1), the last
    row / column of crops taking the remainder (GlobalCom²'s partition of the thumbnail map)."""
    rows, cols = layout.grid
    pps = layout.patches_per_side
    grid = thumb.view(pps, pps).double().tolist()
    h, w = max(pps // rows, 1), max(pps // cols, 1)
    sums = []
    for i in range(rows):
        for j in range(cols):
            r_hi = pps if i == rows - 1 else (i + 1) * h
            c_hi = pps if j == cols - 1 else (j + 1) * w
            sums.append(sum(grid[r][c] for r in range(i * h, min(r_hi, pps)) for c in range(j * w, min(c_hi, pps))))
    best = max(sums) if which == "most" else min(sums)
    return sums.index(best), sums


def expected_drop(layout, dropped, newlines):
    """The packed sequence without crop ``dropped``'s tokens, by explicit loops over the packed rows."""
    n = layout.tokens_per_view
    packed = layout.packed_sources.tolist()
    out, row = packed[:n], []
    for source in packed[n:]:
        if source != NEWLINE:
            row.append(source)
            continue
        kept = [s for s in row if s // n != 1 + dropped]
        if kept or newlines == "keep" or len(kept) == len(row):
            out += kept + [NEWLINE]
        row = []
    return out


# -- views ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_thumbnail_only_keeps_exactly_the_thumbnail_in_spatial_order(name):
    layout = LAYOUTS[name]
    selection = ViewsOnly("thumbnail_only").select([None], [layout])
    assert selection.per_image()[0].tolist() == list(range(layout.tokens_per_view))
    assert layout.packed_sources[: layout.tokens_per_view].tolist() == list(range(layout.tokens_per_view))


def test_thumbnail_only_on_clip_l_336_keeps_576():
    assert ViewsOnly("thumbnail_only").select([None], [llava(672, 500)]).num_tokens.tolist() == [576]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_crops_only_is_the_packed_sequence_minus_the_thumbnail(name):
    layout = LAYOUTS[name]
    n = layout.tokens_per_view
    packed = layout.packed_sources.tolist()
    crops = [s for s in packed if s == NEWLINE or s >= n]
    assert ViewsOnly("crops_only").select([None], [layout]).per_image()[0].tolist() == crops
    without = ViewsOnly("crops_only", newlines="drop").select([None], [layout]).per_image()[0].tolist()
    assert without == [s for s in crops if s != NEWLINE]


def test_views_batch_of_different_sizes():
    layouts = [LAYOUTS["tiny 2x2"], LAYOUTS["tiny 3x1 tall"], LAYOUTS["tiny 1x3"]]
    for views in ("thumbnail_only", "crops_only"):
        batch = ViewsOnly(views).select([None] * 3, layouts).per_image()
        single = [ViewsOnly(views).select([None], [layout]).per_image()[0] for layout in layouts]
        assert [b.tolist() for b in batch] == [s.tolist() for s in single]


def test_crops_only_refuses_an_image_without_crops():
    base_only = OneVisionLayout((100, 100), (0, 0), 4, 56, 9)
    assert ViewsOnly("thumbnail_only").select([None], [base_only]).per_image()[0].tolist() == list(range(16))
    with pytest.raises(ValueError, match="image 0 has no crops"):
        ViewsOnly("crops_only").select([None], [base_only])


# -- drop_crop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["most", "least"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_drop_crop_removes_exactly_the_crop_the_score_names(name, which):
    layout = LAYOUTS[name]
    n = layout.tokens_per_view
    for seed in range(3):
        scores = scores_for(layout, seed)
        dropped, sums = oracle_dropped(scores[0], layout, which)
        selection = DropCrop(which).select([scores], [layout])
        kept = selection.per_image()[0].tolist()
        assert selection.info["dropped_crop"].tolist() == [dropped]
        torch.testing.assert_close(selection.info["crop_scores"][0], torch.tensor(sums, dtype=torch.float64))
        # Every token of every other view, none of the dropped one: the packed tokens in packed order.
        tokens = [s for s in kept if s != NEWLINE]
        assert tokens == [s for s in layout.packed_sources.tolist() if s != NEWLINE and s // n != 1 + dropped]
        assert kept == expected_drop(layout, dropped, "rows")
        assert selection.crop_budgets[0].tolist() == [0.0 if j == dropped else 1.0 for j in range(layout.num_crops)]
        keep_all = DropCrop(which, newlines="keep").select([scores], [layout]).per_image()[0].tolist()
        assert keep_all == expected_drop(layout, dropped, "keep")


def test_drop_crop_in_a_one_column_grid_takes_the_emptied_rows_newlines():
    layout = LAYOUTS["llava 3x1 tall"]
    top, bottom, _, _ = layout.unpadded_region()
    scores = scores_for(layout)
    selection = DropCrop("most").select([scores], [layout])
    dropped = selection.info["dropped_crop"].item()
    rows_of_crop = len(set(range(top, bottom)) & set(range(24 * dropped, 24 * (dropped + 1))))
    assert rows_of_crop > 0 and selection.info["dropped_newlines"].item() == rows_of_crop
    kept_newlines = (selection.per_image()[0] == NEWLINE).sum().item()
    assert kept_newlines == (layout.packed_sources == NEWLINE).sum().item() - rows_of_crop
    keep = DropCrop("most", newlines="keep").select([scores], [layout])
    assert (keep.per_image()[0] == NEWLINE).sum().item() == (layout.packed_sources == NEWLINE).sum().item()
    # A 2x2 grid: every row keeps the other column's tokens, so every newline stays.
    square = LAYOUTS["llava 2x2"]
    assert DropCrop("least").select([scores_for(square)], [square]).info["dropped_newlines"].item() == 0


def test_the_one_crop_grid_drops_its_only_crop_and_keeps_the_thumbnail():
    layout = LAYOUTS["llava 1x1"]
    for which in ("most", "least"):
        kept = DropCrop(which).select([scores_for(layout)], [layout]).per_image()[0].tolist()
        assert kept == list(range(576))


def test_most_and_least_differ_and_ties_go_to_the_lower_crop():
    layout = LAYOUTS["llava 2x2"]
    scores = torch.zeros(5, 576)
    scores[0].view(24, 24)[12:, :12] = 1.0  # crop 2's region (bottom left) is the richest
    scores[0].view(24, 24)[:12, 12:] = -1.0  # crop 1's region (top right) the poorest
    assert DropCrop("most").select([scores], [layout]).info["dropped_crop"].tolist() == [2]
    assert DropCrop("least").select([scores], [layout]).info["dropped_crop"].tolist() == [1]
    flat = torch.ones(5, 576)
    for which in ("most", "least"):
        assert DropCrop(which).select([flat], [layout]).info["dropped_crop"].tolist() == [0]


def test_drop_crop_batch_of_different_sizes_equals_one_at_a_time():
    layouts = [LAYOUTS["tiny 2x2"], LAYOUTS["tiny 3x1 tall"], LAYOUTS["tiny 1x3"], LAYOUTS["tiny 1x2 wide"]]
    scores = [scores_for(layout, seed) for seed, layout in enumerate(layouts)]
    batch = DropCrop("least").select(scores, layouts)
    for b, (layout, s) in enumerate(zip(layouts, scores)):
        single = DropCrop("least").select([s], [layout])
        assert batch.per_image()[b].tolist() == single.per_image()[0].tolist()
        assert batch.info["dropped_crop"][b] == single.info["dropped_crop"][0]


def test_an_image_without_crops_keeps_everything():
    base_only = OneVisionLayout((100, 100), (0, 0), 4, 56, 9)
    selection = DropCrop("most", score="cosine").select([torch.randn(1, 16)], [base_only])
    assert selection.per_image()[0].tolist() == base_only.packed_sources.tolist()
    assert selection.info["dropped_crop"].tolist() == [-1] and selection.crop_budgets.shape == (1, 0)
    mixed = [base_only, LAYOUTS["onevision 2x3"]]
    batch = DropCrop("most", score="cosine").select([torch.randn(1, 16), scores_for(mixed[1])], mixed)
    assert batch.per_image()[0].tolist() == base_only.packed_sources.tolist()
    assert batch.info["dropped_crop"][0] == -1 and batch.info["dropped_crop"][1] >= 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ViewsOnly("thumb"), "views: views='thumb' is not one of thumbnail_only, crops_only"),
        (lambda: ViewsOnly("crops_only", newlines="padded"), "views: newlines='padded' is not one of keep, drop"),
        (lambda: DropCrop("max"), "drop_crop: which='max' is not one of most, least"),
        (
            lambda: DropCrop(score="attention"),
            "drop_crop: score='attention' is not one of cls_logit, cls_softmax, cosine",
        ),
        (lambda: DropCrop(newlines="padded"), "drop_crop: newlines='padded' is not one of rows, keep"),
    ],
)
def test_bad_options_name_the_value_and_the_valid_ones(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_drop_crop_rejects_scores_that_do_not_fit_the_layout():
    layout = LAYOUTS["tiny 2x2"]
    with pytest.raises(ValueError, match=r"image 0: scores are \(4, 16\)"):
        DropCrop().select([torch.randn(4, 16)], [layout])
    with pytest.raises(ValueError, match="NaN or inf"):
        DropCrop().select([torch.full((5, 16), float("nan"))], [layout])


def test_scores_and_params():
    assert DropCrop().score_request.kind == "cls_logit" and DropCrop().score_request.layer == -1
    assert ViewsOnly().score_request.kind == "none"
    for compressor in (ViewsOnly("thumbnail_only"), ViewsOnly("crops_only"), DropCrop("most"), DropCrop("least")):
        params = compressor.params()
        assert (
            params["ratio"] == 1.0
            and params["convention"]
            and params["variant"] in ("thumbnail_only", "crops_only", "most", "least")
        )
    assert "highest" in DropCrop("most").params()["convention"]
    assert "lowest" in DropCrop("least").params()["convention"]


# -- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["compressor=views"], ("views", "thumbnail_only")),
        (["compressor=views", "+compressor_options.views.views=crops_only"], ("views", "crops_only")),
        (["compressor=views", "compressor.views=crops_only"], ("views", "crops_only")),
        (["compressor=drop_crop"], ("which", "most")),
        (["compressor=drop_crop", "+compressor_options.drop_crop.which=least"], ("which", "least")),
        (["compressor=drop_crop", "compressor.which=least"], ("which", "least")),
    ],
)
def test_the_literal_overrides_compose(overrides, expected):
    compressor = instantiate(compose_config(*overrides, "ratio=0.5").compressor)
    assert getattr(compressor, expected[0]) == expected[1]
    assert compressor.params()["ratio"] == 1.0 and compressor.params()["variant"] == expected[1]


def test_the_literal_command_lines():
    for args, line in [
        (["compressor=views", "compressor.views=crops_only"], "views: crops_only"),
        (["compressor=drop_crop", "compressor.which=least"], "which: least"),
    ]:
        result = run_py(*args, "--cfg", "job", "--resolve", timeout=120)
        assert result.returncode == 0 and line in result.stdout, result.stderr[-2000:]
    bad = run_py("compressor=views", "compressor.views=thumb", timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: views: views='thumb' is not one of thumbnail_only, crops_only"


# -- through run.py's recipe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, overrides",
    [
        ("tiny", ["compressor=views", "compressor.views=thumbnail_only"]),
        ("tiny", ["compressor=views", "compressor.views=crops_only"]),
        ("tiny", ["compressor=drop_crop", "compressor.which=most"]),
        ("tiny", ["compressor=drop_crop", "compressor.which=least"]),
        ("tiny_onevision", ["compressor=views", "compressor.views=crops_only"]),
        ("tiny_onevision", ["compressor=drop_crop", "compressor.which=least", "compressor.score=cosine"]),
    ],
)
def test_a_run_records_what_each_view_kept(tmp_path, cache_dir, model, overrides):
    records = run(compose_config(f"model={model}", *overrides, f"results_dir={tmp_path}", "ratio=0.5", "suite.limit=2"))
    assert [r["task"] for r in records] == ["pope", "vqav2_val"]
    for record in records:
        assert record["status"] == "done" and record["ratio"] == 1.0
        assert record["efficiency"]["failed_samples"] == 0
        for sample in record["samples"]:
            [per_view] = sample["kept_per_view"]
            kept, before = sample["visual_tokens_kept"], sample["visual_tokens_before"]
            assert sum(per_view) + sample["newline_tokens_kept"] == kept
            variant = record["compressor"]["params"]["variant"]
            if variant == "thumbnail_only":
                assert per_view[0] == 16 and sum(per_view[1:]) == 0 and kept == 16
            elif variant == "crops_only":
                assert per_view[0] == 0 and kept == before - 16
                assert sample["newline_tokens_kept"] == sample["newline_tokens_before"]
            else:
                [budgets] = sample["crop_budgets"]
                dropped = budgets.index(0.0)
                assert budgets.count(0.0) == 1 and per_view[0] == 16 and per_view[1 + dropped] == 0
                assert kept < before
            assert sample["ratio_convention"] == record["compressor"]["params"]["convention"]


@pytest.mark.slow
def test_a_sweep_over_ratios_runs_each_variant_once(tmp_path, cache_dir):
    results = tmp_path / "results"
    result = run_py(
        "-m",
        "compressor=views,drop_crop",
        "+compressor_options.views.views=thumbnail_only,crops_only",
        "+compressor_options.drop_crop.which=most,least",
        "ratio=0.5,0.25",
        "tasks=[pope]",
        "suite.limit=1",
        f"results_dir={results}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep: 16 runs: 4 ran, 12 already done, 0 failed" in result.stdout
    runs = sorted(
        (r["compressor"]["name"], r["compressor"]["params"]["variant"], r["ratio"]) for _, r in iter_records(results)
    )
    assert runs == [
        ("drop_crop", "least", 1.0),
        ("drop_crop", "most", 1.0),
        ("views", "crops_only", 1.0),
        ("views", "thumbnail_only", 1.0),
    ]
    table = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", str(results), "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.splitlines()
    labels = sorted(line.split(",")[1] for line in table[1:] if line.strip())
    assert labels == ["drop_crop (least)", "drop_crop (most)", "views (crops_only)", "views (thumbnail_only)"]
