"""Each published row's protocol: the papers' own FasterVLM baseline, TextVQA OCR tokens per row, and
``gc2bench table --paper`` marking rows run under a different protocol."""

import csv

import pytest

from gc2bench.config import ConfigError, compose_run_config
from gc2bench.results.table import collect, read_paper, render
from gc2bench.run import suite_entries

from conftest import SHARED, compact_markdown, paper_table

# AAAI Table 2 (allocation ablation, R = 0.25), the "Uniform" row: SQA, POPE, TextVQA, MME, MM-Vet.
AAAI_TABLE2_UNIFORM = ("67.1", "87.2", "60.1", "1454.6", "37.8")


def paper_rows(name):
    with open(paper_table(name), newline="") as file:
        return list(csv.DictReader(file))


def cell(rows, key, value, ratio):
    return next(r for r in rows if r[key] == value and float(r["ratio"]) == ratio)


def test_tcsvt_uniform_ablation_row_is_table_one_fastervlm_row():
    """The evidence for compressor=fastervlm_gc2: TCSVT Table III "Uniform" (R = 0.25) = Table I FasterVLM."""
    uniform = cell(paper_rows("tcsvt_table3_allocation_ablation.csv"), "allocation", "uniform", 0.25)
    fastervlm = cell(paper_rows("tcsvt_table1_llava_next_7b.csv"), "method", "fastervlm", 0.25)
    for column in ("textvqa", "pope", "mme", "mmvet"):
        assert uniform[column] == fastervlm[column]
    # ...and the ablation ran local token scores: Table III's Softmax (sum) is Table IV's "local" row.
    summed = cell(paper_rows("tcsvt_table3_allocation_ablation.csv"), "allocation", "softmax_sum", 0.25)
    local = cell(paper_rows("tcsvt_table4_token_score_ablation.csv"), "token_score", "local", 0.25)
    both = cell(paper_rows("tcsvt_table4_token_score_ablation.csv"), "token_score", "both", 0.25)
    assert all(summed[c] == local[c] for c in ("textvqa", "pope", "mme", "mmvet"))
    assert any(summed[c] != both[c] for c in ("textvqa", "pope", "mme", "mmvet"))


def test_aaai_table2_uniform_row_is_the_papers():
    papers = list((SHARED / "papers").glob("001_*.txt"))
    if not papers:
        pytest.skip("../shared/papers not beside the repo (the row is copied above)")
    text = papers[0].read_text()
    table2 = text[text.index("Ablation on Adaptive Compression Adjustment") :]
    uniform = next(line for line in table2.splitlines() if line.startswith("Uniform\t")).split("\t")
    assert tuple(uniform[1:6]) == AAAI_TABLE2_UNIFORM


def test_aaai_uniform_ablation_row_is_aaai_fastervlm_row_but_textvqa():
    sqa, pope, textvqa, mme, mmvet = AAAI_TABLE2_UNIFORM
    fastervlm = cell(paper_rows("aaai_table1_llava_next_7b.csv"), "method", "fastervlm", 0.25)
    assert (sqa, pope, mme, mmvet) == (fastervlm["sqa"], fastervlm["pope"], fastervlm["mme"], fastervlm["mmvet"])
    assert textvqa == "60.1" and fastervlm["textvqa"] == "58.8"  # with OCR tokens vs TCSVT's without


def test_aaai_fastv_and_fastervlm_textvqa_cells_are_tcsvt_ones_globalcom2_not():
    aaai, tcsvt = paper_rows("aaai_table1_llava_next_7b.csv"), paper_rows("tcsvt_table1_llava_next_7b.csv")
    for ratio in (0.5, 0.25, 0.1):
        for method in ("fastv", "fastervlm"):
            assert cell(aaai, "method", method, ratio)["textvqa"] == cell(tcsvt, "method", method, ratio)["textvqa"]
        gc2_aaai, gc2_tcsvt = (cell(rows, "method", "globalcom2", ratio)["textvqa"] for rows in (aaai, tcsvt))
        assert float(gc2_aaai) > float(gc2_tcsvt)


def textvqa_entry(*overrides):
    cfg = compose_run_config(["suite=paper10_fixtures", *overrides])
    return next(e for e in suite_entries(cfg) if e["task"] == "textvqa_val")


@pytest.mark.parametrize(
    "experiment, compressor, ocr",
    [
        ("aaai_table1", "none", True),
        ("aaai_table1", "globalcom2", True),
        ("aaai_table1", "fastervlm", False),
        ("aaai_table1", "fastervlm_gc2", False),
        ("aaai_table1_llm", "fastv", False),
        ("aaai_table1_llm", "sparsevlm", True),
        ("tcsvt_table1", "globalcom2", False),
    ],
)
def test_each_row_runs_textvqa_as_its_paper_did(experiment, compressor, ocr):
    assert textvqa_entry(f"experiment={experiment}", f"compressor={compressor}")["ocr_tokens"] is ocr


def test_task_overrides_name_an_unknown_task_clearly():
    cfg = compose_run_config(["suite=smoke", "+task_overrides.none.textvqa_val.ocr_tokens=true"])
    with pytest.raises(ConfigError, match=r"task_overrides.none: tasks \['textvqa_val'\] are not in suite=smoke"):
        suite_entries(cfg)


def test_fastervlm_gc2_is_globalcom2_uniform_with_local_scores():
    from hydra.utils import instantiate

    params = instantiate(compose_run_config(["compressor=fastervlm_gc2", "ratio=0.1"]).compressor).params()
    reference = instantiate(
        compose_run_config(
            ["compressor=globalcom2", "ratio=0.1", "compressor.allocation=uniform", "compressor.token_score=local"]
        ).compressor
    ).params()
    assert params == {**reference, "name": "fastervlm_gc2"}


def record(method, ratio, task, score, params=None, pipeline="llava", entry=None):
    return {
        "model": {"name": "m", "pipeline": pipeline},
        "compressor": {"name": method, "params": {"ratio": ratio, **(params or {})}},
        "ratio": ratio,
        "task": task,
        "entry": entry or {"task": task},
        "metrics": {"score": score, "metric": "m"},
        "tokens": {},
        "efficiency": {},
        "versions": {},
        "config": {},
        "status": "done",
    }


def paper_line(text, label):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {label} |"))
    return lines[start + 1]


def test_paper_marks_rows_whose_protocol_differs():
    ocr_off = {"task": "textvqa_val", "ocr_tokens": False}
    records = [
        record("none", 1.0, "textvqa_val", 61.0, entry=ocr_off),
        record("fastervlm", 0.25, "textvqa_val", 58.0, entry=ocr_off),  # the authors' code
        record("fastervlm_gc2", 0.25, "textvqa_val", 58.5, entry=ocr_off),  # as published
        record("globalcom2", 0.25, "textvqa_val", 59.0, pipeline="transformers", entry=ocr_off),
        record(
            "fastv",
            0.25,
            "textvqa_val",
            58.0,
            {"budget_of": 2880, "share": "kept", "decode": "static"},
            entry={"task": "textvqa_val", "ocr_tokens": True},
        ),
    ]
    text = compact_markdown(render(collect(records), "md", read_paper(paper_table("tcsvt_table1_llava_next_7b.csv"))))
    assert paper_line(text, "fastervlm_gc2").startswith("|  |  | paper | 58.8 |")
    assert paper_line(text, "fastervlm").startswith("|  |  | paper † | 58.8 |")
    assert paper_line(text, "globalcom2").startswith("|  |  | paper † | 59.2 |")
    assert paper_line(text, "fastv").startswith("|  |  | paper † | 58.4 |")
    assert paper_line(text, "none").startswith("|  |  | paper | 61.3 |")
    notes = [line for line in text.splitlines() if line.startswith("†")]
    assert len(notes) == 3
    assert any(n.startswith("†fastervlm R=0.25") and "fastervlm_gc2" in n for n in notes)
    assert any(n.startswith("†globalcom2 R=0.25") and "model.pipeline='transformers'" in n for n in notes)
    assert any(n.startswith("†fastv R=0.25") and "entry.ocr_tokens=True" in n for n in notes)
    assert "TextVQA OCR tokens: on for fastv; off for none, fastervlm, fastervlm_gc2, globalcom2." in text


def test_aaai_table_expects_ocr_per_row():
    records = [
        record("none", 1.0, "textvqa_val", 64.0, entry={"task": "textvqa_val", "ocr_tokens": True}),
        record(
            "fastv",
            0.5,
            "textvqa_val",
            59.0,
            {"budget_of": 2880, "share": "kept", "decode": "static"},
            entry={"task": "textvqa_val", "ocr_tokens": False},
        ),
        record("globalcom2", 0.5, "textvqa_val", 60.0, entry={"task": "textvqa_val", "ocr_tokens": False}),
    ]
    text = compact_markdown(render(collect(records), "md", read_paper(paper_table("aaai_table1_llava_next_7b.csv"))))
    assert paper_line(text, "fastv").startswith("|  |  | paper | 59.6 |")
    assert paper_line(text, "globalcom2").startswith("|  |  | paper † | 62.3 |")
    assert paper_line(text, "none").startswith("|  |  | paper | 64.9 |")
