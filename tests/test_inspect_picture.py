"""`gc2bench inspect … viz=`: the kept-token picture draws what entered the LLM at every stage, titled with the
records' equivalent counts, with a legend and GlobalCom²'s budgets; inspect's JSON is indented on a terminal."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gc2bench.cli import main
from gc2bench.inspection import inspect_with_figure
from gc2bench.layout import AnyResLayout
from gc2bench.models.adapter import EQUIVALENT_CONVENTION
from gc2bench.results.plots import KEPT_LEGEND, KeptPanel, kept_tokens_figure, patch_sources

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def photo(tmp_path_factory, cache_dir):
    path = tmp_path_factory.mktemp("picture") / "red.png"
    Image.new("RGB", (150, 90), RED).save(path)
    return path


def picture(photo, tmp_path, *arguments):
    report, figure = inspect_with_figure(
        [f"image={photo}", "max_new_tokens=1", "ratio=0.25", f"viz={tmp_path / 'kept.png'}", *arguments]
    )
    assert (tmp_path / "kept.png").stat().st_size > 0
    return report, figure


def rows_of(figure) -> list:
    """Per panel row (subfigure): its label, its axes (thumbnail, crops)."""
    return [(sub._suptitle.get_text(), sub.axes) for sub in figure.subfigs]


def kept_cells(axes, cell: int = 56) -> int:
    """Patch cells of a panel drawn unshaded (the red image shows through at their centres); the tiny
    model's views are 4×4 patches drawn 224 px wide."""
    centres = axes.images[0].get_array()[cell // 2 :: cell, cell // 2 :: cell]
    return int((centres.reshape(-1, 3) == RED).all(1).sum())


def texts_of(axes) -> list[str]:
    return [text.get_text() for text in axes.texts]


def test_vision_stage_title_counts_newlines_apart_and_crops_show_their_budgets(photo, tmp_path):
    report, figure = picture(photo, tmp_path, "compressor=globalcom2")
    patches, newlines = sum(report["kept_per_view"]), report["newline_tokens"]
    before, newlines_before = report["visual_tokens_before"], report["newline_tokens_before"]
    # 4/16 thumbnail + 6/32 crop tokens; the authors' padded-row newlines (8) outnumber the packing's (4)
    assert (patches, newlines, before, newlines_before) == (10, 8, 52, 4)
    assert report["equivalent_image_tokens"] == report["visual_tokens_kept"] == patches + newlines
    assert report["equivalent_image_tokens_without_newlines"] == patches
    assert report["equivalent_share_without_newlines"] == patches / (before - newlines_before)
    assert report["equivalent_convention"] == EQUIVALENT_CONVENTION
    assert (
        figure._suptitle.get_text()
        == report["title"]
        == (
            "globalcom2 R=0.25: image tokens entering the LLM\n"
            "10 of 48 without newlines (20.8%) · 18 of 52 with newlines (34.6%)"
        )
    )
    [(label, (thumbnail, crops))] = rows_of(figure)
    assert label == "vision stage: 10 image tokens + 8 newlines"
    assert [t.get_text() for t in figure.legends[0].get_texts()] == list(KEPT_LEGEND)
    assert texts_of(thumbnail) == ["R=0.25 · 4/16"]
    budgets = report["crop_budgets"]
    assert texts_of(crops) == [
        f"r{j + 1}={b:.2f} · {k}/8" for j, (b, k) in enumerate(zip(budgets, report["kept_per_view"][1:]))
    ]
    assert kept_cells(thumbnail) == 4 and kept_cells(crops) == 6


def test_merged_view_summaries_are_counted_but_not_drawn(photo, tmp_path):
    report, figure = picture(photo, tmp_path, "compressor=prumerge")
    [(label, (thumbnail, crops))] = rows_of(figure)
    views = len(report["kept_per_view"])  # one merged summary per view here
    assert (
        label == f"vision stage: {sum(report['kept_per_view'])} image tokens ({views} merged, not drawn) + 0 newlines"
    )
    assert kept_cells(thumbnail) + kept_cells(crops) == sum(report["kept_per_view"]) - views


@pytest.mark.parametrize("decode", ["reselect", "static"])
def test_fastv_picture_shows_what_the_decoder_kept_titled_with_the_layer_average(photo, tmp_path, decode):
    report, figure = picture(photo, tmp_path, "compressor=fastv", f"compressor.decode={decode}")
    assert report["image_tokens_per_layer"] == [52, 52, 13, 13]  # round(0.25 · 52) from layer K = 2
    [stage] = report["llm_stages"]
    assert stage == {"layers": [2, 3], "image_tokens": 11, "newline_tokens": 2, "recycled_tokens": 0}
    assert report["equivalent_image_tokens"] == 32.5
    assert report["equivalent_image_tokens_without_newlines"] == (2 * 48 + 2 * 11) / 4
    assert figure._suptitle.get_text() == (
        "fastv R=0.25: image tokens entering the LLM, averaged over its 4 layers\n"
        "29.5 of 48 without newlines (61.5%) · 32.5 of 52 with newlines (62.5%)"
    )
    [(label, (thumbnail, crops))] = rows_of(figure)  # the vision stage kept everything: no row for it
    note = " at prefill (decode=reselect: each generated token selects anew)" if decode == "reselect" else ""
    assert label == "LLM layers 2–3 (stage 1): 11 image tokens + 2 newlines" + note
    assert kept_cells(thumbnail) + kept_cells(crops) == 11
    assert texts_of(thumbnail) == [f"{kept_cells(thumbnail)}/16"]
    assert sum(int(t.split("/")[0]) for t in texts_of(crops)) == kept_cells(crops)


def test_a_multi_stage_method_gets_one_row_per_stage(photo, tmp_path):
    report, figure = picture(photo, tmp_path, "compressor=sparsevlm")
    per_layer, stages = report["image_tokens_per_layer"], report["llm_stages"]
    rows = rows_of(figure)
    assert len(rows) == len(stages) == 3
    assert [s["layers"] for s in stages] == [[1, 1], [2, 2], [3, 3]]
    for stage, (label, (thumbnail, crops)) in zip(stages, rows):
        first = stage["layers"][0]
        assert stage["image_tokens"] + stage["newline_tokens"] + stage["recycled_tokens"] == per_layer[first]
        assert label.startswith(f"LLM layer {first} (stage {first}): {stage['image_tokens']} image tokens")
        assert label.endswith(f"+ {stage['recycled_tokens']} recycled (not drawn)")
        assert kept_cells(thumbnail) + kept_cells(crops) == stage["image_tokens"]
    assert stages[0]["image_tokens"] > stages[1]["image_tokens"] > stages[2]["image_tokens"]


def test_a_hybrid_draws_its_crop_budgets_on_the_llm_stage(photo, tmp_path):
    report, figure = picture(photo, tmp_path, "compressor=fastv_globalcom2")
    [(label, (thumbnail, crops))] = rows_of(figure)
    assert label.startswith("LLM layers 2–3 (stage 1)")
    assert texts_of(thumbnail)[0].startswith("R=0.25 · ")
    budgets = report["crop_budgets"]
    assert [t.split(" · ")[0] for t in texts_of(crops)] == [f"r{j + 1}={b:.2f}" for j, b in enumerate(budgets)]


def test_the_picture_at_llava_next_7b_geometry():
    """24×24 patches per view, a 2×2 grid, a portrait image: every cell kept, dropped or padding as drawn."""
    layout = AnyResLayout((600, 512), (2, 2), 24, crop_size=336)
    sources = patch_sources(layout)
    inside = np.unique(sources[sources >= 0])
    kept = torch.cat([torch.arange(0, 576, 3), torch.from_numpy(inside[::7]), torch.tensor([-1, -1])])
    figure = kept_tokens_figure(Image.new("RGB", (512, 600), (0, 0, 255)), layout, [KeptPanel("one", kept)], "t")
    [(_, (thumbnail, crops))] = rows_of(figure)
    cell = 12
    thumb = thumbnail.images[0].get_array()[cell // 2 :: cell, cell // 2 :: cell]
    assert thumb.shape[:2] == (24, 24)
    assert (thumb.reshape(-1, 3)[::3] == (0, 0, 255)).all() and int((thumb[..., 0] == 160).sum()) == 576 - 192
    grid = crops.images[0].get_array()[cell // 2 :: cell, cell // 2 :: cell]
    assert grid.shape[:2] == sources.shape == (48, 48)
    is_kept = np.isin(sources, kept.numpy())
    assert (grid[is_kept] == (0, 0, 255)).all() and is_kept.sum() == len(inside[::7])
    assert (grid[~is_kept & (sources >= 0)][:, 0] == 160).all()  # dropped: light grey
    assert (grid[sources < 0][:, 0] == 72).all() and (sources < 0).sum() == 2 * 48 * 4  # padding: dark
    assert texts_of(thumbnail) == ["192/576"]


@pytest.mark.parametrize("terminal", [True, False])
def test_inspect_json_is_indented_on_a_terminal(capsys, cache_dir, photo, monkeypatch, terminal):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    assert main(["inspect", f"image={photo}", "max_new_tokens=1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["compressor"]["name"] == "none"
    assert out.startswith('{\n  "image": ') == terminal and (out.count("\n") == 1) != terminal
