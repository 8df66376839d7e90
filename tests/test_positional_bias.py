"""`gc2bench analyze positional-bias` (AAAI GlobalCom² Fig. 4): the crop_order option really reorders what the
LLM sees, and the per-crop kept counts are exactly what the decoder pruner kept."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gc2bench.analysis.positional_bias import (
    Options,
    bucket_counts,
    crop_order_methods,
    crops_at_positions,
    measure_image,
    summarize,
)
from gc2bench.cli import main
from gc2bench.compressors.base import NEWLINE, crop_block_sources, crop_order_selection
from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.hybrid import FastVGlobalCom2, SparseVLMGlobalCom2
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.pdrop import PDrop
from gc2bench.compressors.sparsevlm import SparseVLM
from gc2bench.layout import AnyResLayout, OneVisionLayout

from conftest import REPO

METHODS = {  # ratio → compressor on the 4-layer tiny LLMs ("auto" layers scale to them)
    "fastv": lambda ratio, **kw: FastV(ratio, **kw),
    "pdrop": lambda ratio, **kw: PDrop(max(ratio, 0.3), **kw),
    "sparsevlm": lambda ratio, **kw: SparseVLM(max(ratio, 0.3), **kw),
    "fastv_globalcom2": lambda ratio, **kw: FastVGlobalCom2(ratio, **kw),
    "sparsevlm_globalcom2": lambda ratio, **kw: SparseVLMGlobalCom2(max(ratio, 0.3), **kw),
}
LAYOUTS = [
    AnyResLayout((100, 160), (2, 2), 4),  # padding rows top and bottom
    AnyResLayout((200, 90), (2, 2), 4),  # padding columns left and right
    AnyResLayout((60, 170), (1, 3), 4),
    AnyResLayout((170, 60), (3, 1), 4),
    OneVisionLayout((168, 224), (3, 4), 4),  # anyres_max_9 downsampling: virtual crop views
    OneVisionLayout((112, 112), (2, 2), 4),
]


def picture(height, width, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def crop_blocks(sources: torch.Tensor, tokens_per_view: int) -> list[list[int]]:
    """The emitted sources after the thumbnail, cut where the crop changes (a newline joins the crop before it)."""
    body = sources[tokens_per_view:].tolist()
    blocks, current = [], None
    for source in body:
        crop = current if source == NEWLINE else source // tokens_per_view
        if crop != current:
            blocks.append([])
            current = crop
        blocks[-1].append(source)
    return blocks


# -- the reordering itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout", LAYOUTS, ids=lambda layout: f"{type(layout).__name__}-{layout.grid[0]}x{layout.grid[1]}"
)
def test_reversed_emission_is_the_sequential_crop_blocks_in_reverse(layout):
    n_tok, crops = layout.tokens_per_view, layout.num_crops
    packed = layout.packed_sources
    sequential = crop_block_sources(packed, n_tok, crops, "sequential")
    reversed_ = crop_block_sources(packed, n_tok, crops, "reversed")
    assert crop_block_sources(packed, n_tok, crops, "packed") is packed
    for emitted in (sequential, reversed_):
        assert torch.equal(emitted[:n_tok], torch.arange(n_tok))  # the thumbnail stays first
        assert sorted(emitted[emitted >= 0].tolist()) == sorted(packed[packed >= 0].tolist())
    seq_blocks, rev_blocks = crop_blocks(sequential, n_tok), crop_blocks(reversed_, n_tok)
    assert rev_blocks == seq_blocks[::-1]
    present = [c for c in range(1, crops + 1) if bool(((packed // n_tok) == c).any())]
    assert [block[0] // n_tok for block in seq_blocks] == present  # crops 1..n, one block each
    grid = packed[n_tok:]
    rows = torch.cumsum((grid == NEWLINE).long(), 0) - (grid == NEWLINE).long()
    for block in seq_blocks:
        crop = block[0] // n_tok
        mine = (grid // n_tok == crop) & (grid != NEWLINE)
        expected = []
        for row in torch.unique(rows[mine]).tolist():  # the crop's share of each packed row, then a newline
            expected += grid[mine & (rows == row)].tolist() + [NEWLINE]
        assert block == expected


def test_images_without_crops_are_left_alone():
    base_only = OneVisionLayout((100, 100), (0, 0), 4)
    assert torch.equal(crop_block_sources(base_only.packed_sources, 16, 0, "reversed"), base_only.packed_sources)


@pytest.mark.parametrize("method", list(METHODS))
def test_default_crop_order_is_transformers_packing_and_leaves_params_unchanged(method):
    compressor = METHODS[method](0.5)
    layouts = LAYOUTS[:4]
    scores = [torch.rand(layout.num_views, layout.tokens_per_view) for layout in layouts]
    got, expected = compressor.select(scores, layouts), NoCompression().select(scores, layouts)
    assert torch.equal(got.token_sources, expected.token_sources) and torch.equal(got.num_tokens, expected.num_tokens)
    assert "crop_order" not in compressor.params()  # same run directories as before
    assert METHODS[method](0.5, crop_order="reversed").params()["crop_order"] == "reversed"
    with pytest.raises(ValueError, match="crop_order='bogus' is not one of packed, sequential, reversed"):
        METHODS[method](0.5, crop_order="bogus")


def test_crop_order_selection_pads_a_batch():
    selection = crop_order_selection(LAYOUTS[:3], "reversed")
    for row, layout in zip(selection.per_image(), LAYOUTS[:3]):
        assert torch.equal(row, crop_block_sources(layout.packed_sources, 16, layout.num_crops, "reversed"))


def test_bucket_counts():
    segments = torch.tensor([[-1, 0, 0, 1, 2, -2, 2, -1], [-1, -1, 2, -3, -3, -2, -1, -1]])
    assert bucket_counts(segments, 3).tolist() == [[2, 1, 2, 1, 0], [0, 0, 1, 1, 2]]
    weights = torch.arange(16, dtype=torch.float32).view(2, 8)
    assert bucket_counts(segments, 3, weights).tolist() == [[3.0, 3.0, 10.0, 5.0, 0.0], [0.0, 0.0, 10.0, 13.0, 23.0]]


# -- inside the tiny models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build(cache_dir):
    from gc2bench.models.llava_next import LlavaNextAdapter
    from gc2bench.models.tiny import tiny_llava_next_path
    from gc2bench.models.tiny_onevision import load_tiny_onevision

    def make(model, compressor):
        if model == "next":
            return LlavaNextAdapter(str(tiny_llava_next_path(0, cache_dir)), compressor, dtype="float32", device="cpu")
        return load_tiny_onevision(compressor, dtype="float32", device="cpu")

    return make


IMAGES = {
    "next": [picture(130, 120, 1), picture(70, 150, 2)],  # 2x2 with padding; 1x3
    "onevision": [picture(120, 120, 1), picture(168, 224, 2)],
}  # 2x2; 3x4 downsampled
COSINE = {"next": {}, "onevision": {"score": "cosine"}}


def llm_image_embeddings(adapter, image, order):
    """(image-token input embeddings of the LLM [M, D], the segment of each [M]) for one answer."""
    seen = {}

    def grab(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None and kwargs["inputs_embeds"].shape[1] > 1:
            seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    adapter.compressor.crop_order = order
    handle = adapter.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        adapter.generate(["What is it?"], [[image]], max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    image_positions = adapter.last_plan.image[0]
    return seen["embeds"][0, image_positions], adapter.last_plan.segment[0, image_positions]


@pytest.mark.parametrize("model", ["next", "onevision"])
def test_the_llm_sees_crop_j_where_crop_n_minus_1_minus_j_was(build, model):
    adapter = build(model, FastV(0.25))
    for image in IMAGES[model]:
        seq_embeds, seq_segments = llm_image_embeddings(adapter, image, "sequential")
        rev_embeds, rev_segments = llm_image_embeddings(adapter, image, "reversed")
        layout, _ = adapter.last_selection[0]
        n_tok, crops = layout.tokens_per_view, layout.num_crops
        blocks = crop_blocks(crop_block_sources(layout.packed_sources, n_tok, crops, "sequential"), n_tok)
        assert len(blocks) == crops > 1
        bounds = np.cumsum([n_tok] + [len(b) for b in blocks]).tolist()
        seq_parts = [seq_embeds[a:b] for a, b in zip([0] + bounds, bounds)]
        bounds_rev = np.cumsum([n_tok] + [len(b) for b in blocks[::-1]]).tolist()
        rev_parts = [rev_embeds[a:b] for a, b in zip([0] + bounds_rev, bounds_rev)]
        assert torch.equal(rev_parts[0], seq_parts[0])  # the thumbnail
        for j in range(crops):  # block j ↔ block n-1-j
            assert torch.equal(rev_parts[1 + j], seq_parts[crops - j])
        # the pruner's segment ids (adapter: source // N) follow the blocks
        assert [int(s) for s in rev_segments[n_tok:] if s >= 0] == [
            c for block in blocks[::-1] for c in [block[0] // n_tok] * sum(1 for x in block if x >= 0)
        ]
        assert sorted(seq_segments.tolist()) == sorted(rev_segments.tolist())


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("order", ["sequential", "reversed", "packed"])
def test_per_crop_counts_sum_to_what_the_pruner_kept(build, model, method, order):
    compressor = METHODS[method](0.25, **(COSINE[model] if "globalcom2" in method else {}))
    adapter = build(model, compressor)
    num_layers = len(adapter.pruner.layers)
    for number, image in enumerate(IMAGES[model]):
        m = measure_image(adapter, compressor, image, f"image{number}", order, "What is it?")
        plan = adapter.last_plan
        layout, _ = adapter.last_selection[0]
        start = int(plan.image.sum())
        assert (
            sum(m.tokens) == start
            and m.tokens[:-1]
            == torch.bincount(
                torch.where(plan.segment[plan.image] >= 0, plan.segment[plan.image], layout.num_views),
                minlength=layout.num_views + 1,
            ).tolist()
        )
        assert sum(m.kept) == m.kept_total == int(plan.image_tokens_per_layer[-1, 0])
        assert [sum(stage) for stage in m.kept_per_stage] == [
            int(plan.image_tokens_per_layer[s.prune_layer, 0]) for s in adapter.pruner.stages
        ]
        if hasattr(compressor, "layer_counts"):  # the method's schedule
            assert m.kept_total == compressor.layer_counts(start, num_layers)[-1]
        if method == "fastv":
            assert m.kept_total == round(0.25 * start)
        if len(plan.records) == 1 and plan.records[0].recycled is None:
            # one stage, nothing inserted: the kept positions of the unpruned prompt, counted by segment
            keep = plan.records[0].keep[0] & plan.image[0]
            assert m.kept == bucket_counts(torch.where(keep, plan.segment[0], -1)[None], layout.num_views)[0].tolist()
        assert m.crop_at_position == crops_at_positions(order, layout.num_crops)
        assert abs(sum(m.attention) - 1.0) < 1e-9


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", list(METHODS))
def test_ratio_one_keeps_every_token_of_every_crop(build, model, method):
    compressor = METHODS[method](1.0, **(COSINE[model] if "globalcom2" in method else {}))
    adapter = build(model, compressor)
    for order in ("sequential", "reversed"):
        m = measure_image(adapter, compressor, IMAGES[model][0], "image", order, "What is it?")
        assert m.kept == m.tokens and m.kept[-1] == 0


def test_globalcom2_budgets_make_per_crop_counts_independent_of_the_order(build):
    compressor = FastVGlobalCom2(0.25)
    adapter = build("next", compressor)
    image = IMAGES["next"][0]
    by_order = {
        order: measure_image(adapter, compressor, image, "image", order, "What is it?").kept
        for order in ("sequential", "reversed", "packed")
    }
    assert by_order["sequential"][:-2] == by_order["reversed"][:-2] == by_order["packed"][:-2]


def test_summary_rows_follow_positions():
    from gc2bench.analysis.positional_bias import ImageMeasurement

    def fake(order, kept_by_crop):
        kept = [1] + kept_by_crop + [0, 0]
        return ImageMeasurement(
            "x",
            (10, 10),
            (2, 2),
            order,
            crops_at_positions(order, 4),
            [16] * 5 + [8, 0],
            kept,
            [kept],
            [0.2] * 5 + [0.0, 0.0],
            sum(kept),
        )

    # position-driven: the later the position, the more kept, whatever crop sits there
    rows, summaries = summarize([fake("sequential", [1, 2, 3, 6]), fake("reversed", [6, 3, 2, 1])])
    by_position = {(r["order"], r["position"]): r for r in rows}
    assert [by_position["reversed", p]["crop"] for p in (1, 2, 3, 4)] == [4, 3, 2, 1]
    assert [by_position["reversed", p]["kept"] for p in (1, 2, 3, 4)] == [1, 2, 3, 6]
    assert by_position["sequential", 4]["kept_share"] == 6 / 16
    (summary,) = summaries
    assert summary.last_over_first == {"sequential": 6.0, "reversed": 6.0}
    assert summary.agreement_by_position == pytest.approx(1.0) and summary.agreement_by_crop < 0


# -- the command --------------------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_the_png_and_the_json(capsys, cache_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    picture(130, 120, 1).save(folder / "a.png")
    picture(70, 150, 2).save(folder / "b.jpg")
    chart, data = tmp_path / "out" / "fig4.png", tmp_path / "out" / "fig4.json"
    code = main(
        ["analyze", "positional-bias", "ratio=0.5", "--images", str(folder), "--out", str(chart), "--json", str(data)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[1/2] a.png" in err and "[2/2] b.jpg" in err
    assert "positional bias: fastv R=0.5 on tiny" in out and "last / first crop position kept" in out
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300
    result = json.loads(data.read_text())
    assert result["setup"]["compressor"]["name"] == "fastv" and result["setup"]["images"] == 2
    assert {m["order"] for m in result["measurements"]} == {"sequential", "reversed"}
    assert {r["crops"] for r in result["rows"]} == {3, 4}  # 1x3 and 2x2 images, grouped
    for m in result["measurements"]:
        assert sum(m["kept"]) == m["kept_total"] == round(0.5 * sum(m["tokens"]))


def test_cli_synthetic_images_on_tiny_onevision(capsys, cache_dir, tmp_path):
    chart = tmp_path / "ov.png"
    code = main(
        [
            "analyze",
            "positional-bias",
            "model=tiny_onevision",
            "compressor=sparsevlm",
            "ratio=0.5",
            "--num-images",
            "2",
            "--grid",
            "3x4",
            "--orders",
            "reversed,packed",
            "--out",
            str(chart),
            "--json",
            "-",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)  # --json -: stdout is JSON only
    assert {r["crops"] for r in result["rows"]} == {12} and chart.exists()
    assert "recycled" in {r["position"] for r in result["rows"]}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["ratio=1.5"], "error: ratio=1.5 is out of range"),
        (["compressor=globalcom2"], "error: compressor=globalcom2: not an LLM-stage method with a crop_order"),
        (["compressor=nope"], "error: In 'config': Could not find 'compressor/nope'"),
        (["model=nope"], "error: In 'config': Could not find 'model/nope'"),
        (["--images", "/does/not/exist"], "error: --images /does/not/exist: no such file or folder"),
        (["--out", "chart.jpg"], "error: --out chart.jpg: must be a .png file"),
        (
            ["--orders", "sequential,upside-down"],
            "error: --orders 'sequential,upside-down': give a comma-separated list",
        ),
        (["--grid", "two"], "error: --grid 'two': give ROWSxCOLS"),
        (["--num-images", "0"], "error: --num-images 0: must be >= 1"),
        (["compressor.crop_order=bogus"], "error: fastv: crop_order='bogus' is not one of"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_before_loading_the_model(capsys, monkeypatch, arguments, message):
    import gc2bench.config

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded on bad input")

    monkeypatch.setattr(gc2bench.config, "build_model", no_model)
    code = main(["analyze", "positional-bias", *arguments])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and not out


def test_model_compressor_and_ratio_are_hydra_overrides():
    from gc2bench.analysis.positional_bias import prepare
    from gc2bench.cli import build_parser

    cfg, compressor, files = prepare(Options())
    assert (cfg.model.name, compressor.name, cfg.ratio, files) == ("tiny", "fastv", 0.25, None)
    args = build_parser().parse_args(
        ["analyze", "positional-bias", "compressor=pdrop", "ratio=0.5", "compressor.layers=[2,3]", "--num-images", "3"]
    )
    cfg, compressor, _ = prepare(Options(overrides=args.overrides))
    assert (cfg.model.name, compressor.name, cfg.ratio, list(cfg.compressor.layers)) == ("tiny", "pdrop", 0.5, [2, 3])
    for flag in ("--model", "--compressor", "--ratio"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["analyze", "positional-bias", flag, "tiny"])


def test_bad_input_from_the_console_script(tmp_path):
    env = dict(os.environ, GC2BENCH_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "analyze", "positional-bias", "--images", str(tmp_path / "missing.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --images {tmp_path / 'missing.png'}: no such file or folder"
    assert not (tmp_path / "cache").exists()


def test_crop_order_is_a_run_option():
    from hydra.utils import instantiate

    from gc2bench.config import compose_run_config
    from gc2bench.results.records import run_dir

    for name in ("fastv", "pdrop", "sparsevlm"):
        default = instantiate(compose_run_config([f"compressor={name}", "ratio=0.5"], check=False).compressor)
        reversed_ = instantiate(
            compose_run_config(
                [f"compressor={name}", "ratio=0.5", "compressor.crop_order=reversed"], check=False
            ).compressor
        )
        assert default.crop_order == "packed" and reversed_.crop_order == "reversed"
        assert run_dir("r", "tiny", name, default.params()) != run_dir("r", "tiny", name, reversed_.params())
    assert Options().orders == ("sequential", "reversed")


def test_the_methods_with_a_crop_order_are_read_from_conf():
    from gc2bench.config import build_compressor, compose_run_config, config_names

    listed = crop_order_methods()
    assert listed[:3] == ["fastv", "pdrop", "sparsevlm"]  # the table's (the papers') order
    for name in config_names("compressor"):
        compressor = build_compressor(compose_run_config([f"compressor={name}", "ratio=0.5"]))
        assert (name in listed) == hasattr(compressor, "crop_order"), name


def test_documented_commands_parse_and_compose():
    """Every `gc2bench analyze positional-bias` command in the README, docs/ and experiments/ parses and its
    overrides compose, as today's CLI takes them."""
    import re
    import shlex

    from gc2bench.analysis.positional_bias import DEFAULT_OVERRIDES
    from gc2bench.cli import build_parser
    from gc2bench.config import compose_run_config

    commands = []
    for path in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("experiments/**/README.md")]:
        text = path.read_text().replace("\\\n", " ")
        commands += re.findall(r"(gc2bench analyze positional-bias[^`#\n]*)", text)
    assert len(commands) >= 8
    for command in commands:
        args = build_parser().parse_args(shlex.split(command.replace("...", ""))[1:])
        assert not any(o.startswith("-") for o in args.overrides), command
        compose_run_config([*DEFAULT_OVERRIDES, *args.overrides])
