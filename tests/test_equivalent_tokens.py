"""Equal R, equal tokens, visibly: every sample's layer-averaged ("equivalent") image tokens, newlines
counted and not, and ``gc2bench table --tokens``."""

import numpy as np
import pytest
from PIL import Image

from gc2bench.compressors.base import SEGMENT_NEWLINE
from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.pdrop import PDrop
from gc2bench.evaluation.suite import summarize
from gc2bench.models.adapter import EQUIVALENT_CONVENTION

from conftest import compact_markdown


def image(width, height, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


TEXTS = ["Is there a cat?", "What color is it?"]
IMAGES = [[image(120, 80, 1)], [image(40, 200, 2)]]


def adapter_for(tiny_path, compressor):
    from gc2bench.models.llava_next import LlavaNextAdapter

    return LlavaNextAdapter(str(tiny_path), compressor, name="tiny", dtype="float32", device="cpu")


def test_vision_stage_equivalent_is_the_kept_count_at_every_layer(tiny_path):
    adapter = adapter_for(tiny_path, GlobalCom2(ratio=0.25))
    for result in adapter.generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False):
        stats = result.stats
        assert stats.visual_tokens_kept < stats.visual_tokens_before
        assert stats.equivalent_image_tokens == stats.visual_tokens_kept
        assert stats.equivalent_newline_tokens == stats.newline_tokens_kept > 0


def test_fastv_equivalent_averages_the_layers_and_counts_its_newlines(tiny_path):
    """Tiny LLM: 4 layers, K = 2. Layers 0-1 see the whole block, 2-3 the kept tokens; the newlines kept
    are read off the stage's keep mask over the prompt (not the pruner's segment bookkeeping)."""
    adapter = adapter_for(tiny_path, FastV(ratio=0.25, layer=2))
    results = adapter.generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False)
    plan = adapter.last_plan
    keep = plan.records[0].keep
    for row, result in enumerate(results):
        stats = result.stats
        block = stats.visual_tokens_kept
        kept = int((keep[row] & plan.image[row]).sum())
        assert kept == round(0.25 * block)
        assert stats.equivalent_image_tokens == (2 * block + 2 * kept) / 4
        newlines_after = int((keep[row] & (plan.segment[row] == SEGMENT_NEWLINE)).sum())
        assert stats.equivalent_newline_tokens == (2 * stats.newline_tokens_kept + 2 * newlines_after) / 4


def test_pdrop_newlines_follow_every_stage(tiny_path):
    adapter = adapter_for(tiny_path, PDrop(ratio=0.75))
    results = adapter.generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False)
    for result in results:
        stats = result.stats
        assert stats.equivalent_image_tokens == sum(stats.image_tokens_per_layer) / len(stats.image_tokens_per_layer)
        assert 0 <= stats.equivalent_newline_tokens <= stats.newline_tokens_kept
        assert stats.equivalent_newline_tokens < stats.equivalent_image_tokens


def test_summary_carries_equivalent_tokens_shares_and_their_convention(tiny_path):
    import dataclasses

    adapter = adapter_for(tiny_path, FastV(ratio=0.25, layer=2))
    samples = [dataclasses.asdict(r.stats) for r in adapter.generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False)]
    tokens, _ = summarize(samples, [], 1.0)
    assert tokens["equivalent_convention"] == EQUIVALENT_CONVENTION and "newlines" in EQUIVALENT_CONVENTION
    shares = [s["equivalent_image_tokens"] / s["visual_tokens_before"] for s in samples]
    assert tokens["equivalent_share"]["mean"] == pytest.approx(sum(shares) / 2)
    without = [
        (s["equivalent_image_tokens"] - s["equivalent_newline_tokens"])
        / (s["visual_tokens_before"] - s["newline_tokens_before"])
        for s in samples
    ]
    assert tokens["equivalent_share_without_newlines"]["mean"] == pytest.approx(sum(without) / 2)
    assert tokens["equivalent_image_tokens"]["mean"] == pytest.approx(
        sum(s["equivalent_image_tokens"] for s in samples) / 2
    )


def _record(method, ratio, task, score, eq_tokens, eq_share):
    return {
        "model": {"name": "m"},
        "compressor": {"name": method, "params": {"ratio": ratio}},
        "ratio": ratio,
        "task": task,
        "metrics": {"metric": "acc", "score": score},
        "status": "done",
        "tokens": {"equivalent_image_tokens": {"mean": eq_tokens}, "equivalent_share": {"mean": eq_share}},
        "efficiency": {},
        "versions": {},
        "config": {},
    }


def test_table_tokens_adds_each_rows_mean_equivalent_tokens(tmp_path):
    from gc2bench.results.table import collect, render

    records = [
        _record("none", 1.0, "pope", 80.0, 2000.0, 1.0),
        _record("none", 1.0, "gqa", 60.0, 1000.0, 1.0),
        _record("fastv", 0.1, "pope", 70.0, 310.0, 0.155),
        _record("fastv", 0.1, "gqa", 50.0, 150.0, 0.157),
    ]
    text = compact_markdown(render(collect(records), "md", tokens=True))
    header = next(line for line in text.splitlines() if line.startswith("| Method"))
    assert header.endswith("| Eq. tokens | Eq. share (%) |")
    fastv = next(line for line in text.splitlines() if line.startswith("| fastv"))
    assert fastv.endswith("| 230.0 | 15.6 |")
    assert "| 1500.0 | 100.0 |" in next(line for line in text.splitlines() if line.startswith("| none"))
    assert "Eq. tokens" not in render(collect(records), "md")
    rows = render(collect(records), "csv", tokens=True).splitlines()
    assert rows[0].endswith("Eq. tokens,Eq. share (%)") and rows[-1].endswith(",230.00,15.60")


def test_table_cli_tokens_flag(tmp_path, capsys):
    from gc2bench.results.records import write_record
    from gc2bench.results.table import print_table

    for index, r in enumerate(
        [_record("none", 1.0, "pope", 80.0, 2000.0, 1.0), _record("fastv", 0.1, "pope", 70.0, 310.0, 0.155)]
    ):
        write_record(tmp_path / f"run{index}" / "pope.json", r)
    assert print_table(str(tmp_path), tokens=True) == 0
    assert "| fastv | 0.1 | 70.0 | 87.5 | 310.0 | 15.5 |" in compact_markdown(capsys.readouterr().out)
