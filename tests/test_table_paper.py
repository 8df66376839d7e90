"""`gc2bench table` options: published numbers (--paper), LaTeX escaping, bootstrap CIs (--ci)."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from gc2bench.cli import main
from gc2bench.errors import ConfigError
from gc2bench.results.records import record_path, run_dir, write_record
from gc2bench.results.table import MISSING, _latex, collect, confidence_intervals, read_paper, render, sample_set

from conftest import compact_markdown, paper_table

TASK_OF = {
    "vqav2": "vqav2_val",
    "gqa": "gqa",
    "vizwiz": "vizwiz_vqa_val",
    "sqa": "scienceqa_img",
    "textvqa": "textvqa_val",
    "pope": "pope",
    "mme": "mme",
    "mmbench": "mmbench_en_dev",
    "mmbench_cn": "mmbench_cn_dev",
    "mmvet": "mmvet",
}


# Records made under the published protocol (gc2bench.results.published), so --paper marks none of them.
PUBLISHED_PARAMS = {
    "fastv": {"budget_of": 2880, "share": "kept", "decode": "static"},  # the TCSVT protocol
    "sparsevlm": {"budget_of": 2880, "version": "v1", "counting": "authors"},
}


def record(method, ratio, task, score, params=None, samples=None, metric="exact_match", scale=100, status="done"):
    params = {"ratio": ratio, **PUBLISHED_PARAMS.get(method, {}), **(params or {})}
    return {
        "model": {"name": "m", "pipeline": "llava"},
        "compressor": {"name": method, "params": params},
        "ratio": ratio,
        "task": task,
        "metrics": {"score": score, "metric": metric, "scale": scale},
        "tokens": {},
        "efficiency": {},
        "versions": {},
        "config": {},
        "status": status,
        "samples": samples or [],
    }


def exact_match_record(method, ratio, task, correct, params=None):
    """A record whose headline is 100 × mean of per-document exact_match values ``correct``."""
    samples = [{"doc_id": i, "answer": "a", "target": "a", "metric_value": float(c)} for i, c in enumerate(correct)]
    return record(method, ratio, task, 100.0 * sum(correct) / len(correct), params, samples)


def write_paper(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def line(text, *cells):
    return "| " + " | ".join(cells) + " |" in text


# -- --paper ---------------------------------------------------------------------------------------------


def test_paper_numbers_and_exact_differences(tmp_path):
    paper = read_paper(
        write_paper(
            tmp_path / "p.csv",
            ["ratio", "method", "vqav2", "gqa", "pope", "average_pct"],
            [["1.00", "none", "81.8", "64.2", "86.5", "100.0"], ["0.10", "globalcom2", "76.7", "57.1", "83.8", "91.8"]],
        )
    )
    records = [
        record("none", 1.0, "pope", 86.5),
        record("none", 1.0, "gqa", 64.0),
        record("none", 1.0, "vqav2_val", 81.0),
        record("globalcom2", 0.1, "gqa", 57.0),
        record("globalcom2", 0.1, "vqav2_val", 76.0),
        record("globalcom2", 0.1, "pope", 84.0),
    ]
    text = compact_markdown(render(collect(records), "md", paper))
    ours = (76 / 81 + 57 / 64 + 84 / 86.5) / 3 * 100
    assert "| Method | R |  | VQAv2 | GQA | POPE | Average (%) |" in text  # the papers' column order
    assert line(text, "globalcom2", "0.1", "ours", "76.0", "57.0", "84.0", f"{ours:.1f}")
    assert line(text, "", "", "paper", "76.7", "57.1", "83.8", "91.8")
    assert line(text, "", "", "Δ paper", "-0.7", "-0.1", "+0.2", f"{ours - 91.8:+.1f}")
    assert line(text, "", "", "Δ paper", "-0.8", "-0.2", "0.0", "0.0")  # the baseline against the paper's
    rows = list(csv.reader(render(collect(records), "csv", paper).splitlines()))
    assert rows[0] == ["model", "Method", "R", "Value", "vqav2_val", "gqa", "pope", "Average (%)"]
    delta = next(r for r in rows if r[1] == "globalcom2" and r[3] == "delta_paper")
    assert delta[4:] == ["-0.70", "-0.10", "0.20", f"{ours - 91.8:.2f}"]


def test_records_reproducing_a_published_table_differ_by_zero(tmp_path):
    path = paper_table("tcsvt_table1_llava_next_7b.csv")
    published = list(csv.DictReader(path.open()))
    records = [
        record(row["method"], float(row["ratio"]), task, float(row[benchmark]))
        for row in published
        for benchmark, task in TASK_OF.items()
    ]
    text = compact_markdown(render(collect(records), "md", read_paper(path)))
    deltas = [[c.strip() for c in x.strip("|").split("|")][3:] for x in text.splitlines() if "| Δ paper |" in x]
    assert len(deltas) == len(published) and all(len(row) == 11 for row in deltas)
    assert all(cell == "0.0" for row in deltas for cell in row[:-1])
    averages = [float(row[-1]) for row in deltas]
    assert max(abs(a) for a in averages) < 0.1  # published Averages came from the same numbers, rounded
    assert "*" not in text  # all ten benchmarks: the published Average is used as is


def test_paper_average_over_a_subset_is_recomputed_and_marked(tmp_path):
    records = [
        record("none", 1.0, "gqa", 64.0),
        record("none", 1.0, "mme", 1500.0),
        record("fastv", 0.1, "gqa", 56.0),
        record("fastv", 0.1, "mme", 1300.0),
    ]
    text = compact_markdown(render(collect(records), "md", read_paper(paper_table("tcsvt_table1_llava_next_7b.csv"))))
    paper_average = (55.9 / 64.2 + 1282.9 / 1519.0) / 2 * 100
    assert line(text, "", "", "paper", "55.9", "1282.9", f"{paper_average:.1f}*")
    assert "* Average over the 2 benchmarks both tables have (GQA, MME); the paper's recomputed" in text


def test_ablation_table_rows_match_by_parameter():
    records = [
        record("none", 1.0, "textvqa_val", 61.3),
        record("globalcom2", 0.25, "textvqa_val", 58.0, {"allocation": "uniform", "token_score": "local"}),
        record("globalcom2", 0.25, "textvqa_val", 59.5, {"allocation": "softmax_sum", "token_score": "local"}),
    ]
    paper = read_paper(paper_table("tcsvt_table3_allocation_ablation.csv"))
    text = compact_markdown(render(collect(records), "md", paper))
    lines = text.splitlines()
    uniform = lines.index(next(x for x in lines if x.startswith("| globalcom2 (allocation=uniform)")))
    assert lines[uniform + 1].startswith("|  |  | paper | 58.8 |")
    assert lines[uniform + 2].startswith("|  |  | Δ paper | -0.8 |")
    summed = lines.index(next(x for x in lines if x.startswith("| globalcom2 (allocation=softmax_sum)")))
    assert lines[summed + 2].startswith("|  |  | Δ paper | +0.5 |")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("model,ratio,tflops\nllava,1.0,41.7\n", "expected columns ratio, method and some of vqav2"),
        ("ratio,method,gqa\n1.0,none,64.2\n0.1,fastv,abc\n", "line 3, column gqa: 'abc' is not a number"),
        ("ratio,model,size,gqa\n1.0,a,b,64.2\n", "no 'method' column"),
    ],
)
def test_bad_paper_files_are_one_line_errors(tmp_path, capsys, content, message):
    write_record(tmp_path / "r" / "pope.json", record("none", 1.0, "pope", 80.0))
    paper = tmp_path / "paper.csv"
    if content is not None:
        paper.write_text(content)
    assert main(["table", str(tmp_path / "r"), "--paper", str(paper)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --paper {paper}") and message in error and len(error.splitlines()) == 1
    with pytest.raises(ConfigError, match=message):
        read_paper(paper)


def test_cli_table_with_paper_and_model(tmp_path):
    for r in (record("none", 1.0, "gqa", 64.2), record("fastv", 0.5, "gqa", 61.0)):
        write_record(record_path(run_dir(tmp_path, "m", r["compressor"]["name"], r["compressor"]["params"]), "gqa"), r)
    command = [
        sys.executable,
        "-m",
        "gc2bench.cli",
        "table",
        str(tmp_path),
        "--format",
        "csv",
        "--paper",
        str(paper_table("tcsvt_table1_llava_next_7b.csv")),
        "--model",
        "m",
    ]
    rows = list(csv.reader(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()))
    assert ["m", "fastv", "0.5", "paper", "61.8", f"{100 * 61.8 / 64.2:.1f}"] in rows  # GQA only: recomputed
    unknown = subprocess.run(command[:-1] + ["other"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "no finished records for model 'other'" in unknown.stderr


def test_nothing_to_show_exits_1_and_bad_options_exit_2(tmp_path, capsys):
    write_record(tmp_path / "r" / "pope.json", record("none", 1.0, "pope", 80.0, status="failed"))
    assert main(["table", str(tmp_path / "r")]) == 1
    assert capsys.readouterr().err == f"error: no finished run records under {tmp_path / 'r'}\n"
    write_record(tmp_path / "r" / "pope.json", record("none", 1.0, "pope", 80.0))
    assert main(["table", str(tmp_path / "r"), "--ci", "--ci-iterations", "0"]) == 2
    out, err = capsys.readouterr()
    assert err == "error: --ci-iterations 0: must be at least 1\n" and not out


# -- formats ---------------------------------------------------------------------------------------------


def test_latex_escapes_special_characters():
    assert (
        _latex("a_b & 50% #1 $x$ {y} ~ ^ \\")
        == r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert _latex(MISSING) == "--" and _latex("Δ paper") == r"$\Delta$ paper"
    records = [
        record("none", 1.0, "my_task&2", 80.0),
        record("fast_v%", 0.5, "my_task&2", 40.0),
        record("fast_v%", 0.5, "other", 1.0),
    ]
    text = render(collect(records), "latex")
    assert r"Method & R & my\_task\&2 & other & Average (\%) \\" in text
    assert r"fast\_v\% & 0.5 & 40.0 & 1.0 & -- \\" in text  # no baseline for `other`: Average missing
    assert "_" not in text.replace(r"\_", "")


# -- --ci ------------------------------------------------------------------------------------------------


def test_identical_runs_have_a_zero_difference_interval():
    correct = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    records = [exact_match_record("none", 1.0, "gqa", correct), exact_match_record("fastv", 0.5, "gqa", correct)]
    table = collect(records)["m"]
    ci = confidence_intervals(table, iterations=500)
    fastv = [r.label for r in table.rows].index("fastv")
    assert ci.delta[(fastv, "gqa")] == (0.0, 0.0)
    low, high = ci.score[(fastv, "gqa")]
    assert low < 100 * 8 / 12 < high and high - low > 10  # 12 documents: a wide interval around 66.7
    assert ci.average[fastv] == (100.0, 100.0)


def test_a_run_right_wherever_the_baseline_is_wrong_has_a_positive_difference():
    baseline = [1, 0] * 15
    records = [exact_match_record("none", 1.0, "gqa", baseline), exact_match_record("globalcom2", 0.1, "gqa", [1] * 30)]
    table = collect(records)["m"]
    ci = confidence_intervals(table)
    low, high = ci.delta[(1, "gqa")]
    assert 0 < low < 50 < high <= 100  # the point difference is +50
    assert ci.score[(1, "gqa")] == (100.0, 100.0)
    assert ci.average[1][0] > 100.0
    again = confidence_intervals(collect(records)["m"])
    assert again.delta == ci.delta  # a fixed seed: the same intervals every time


def test_ci_rows_in_the_table_and_missing_evidence_is_missing(tmp_path):
    baseline = [1, 0, 1, 1, 0, 1, 1, 0]
    records = [
        exact_match_record("none", 1.0, "gqa", baseline),
        exact_match_record("none", 1.0, "vqav2_val", baseline),
        exact_match_record("fastv", 0.5, "gqa", [1, 0, 1, 0, 0, 1, 1, 0]),
        record("fastv", 0.5, "vqav2_val", 50.0),
    ]  # no per-sample values
    tables = collect(records)
    intervals = {"m": confidence_intervals(tables["m"], iterations=300)}
    text = compact_markdown(render(tables, "md", ci=intervals))
    lines = text.splitlines()
    fastv = lines.index(next(x for x in lines if x.startswith("| fastv |")))
    assert lines[fastv].startswith("| fastv | 0.5 | ours | 50.0 | 50.0 |")
    assert lines[fastv + 1].startswith(f"|  |  | 95% CI | {MISSING} | [")
    assert lines[fastv + 1].endswith(f"| {MISSING} |")  # no Average CI without every task's samples
    assert lines[fastv + 2].startswith("|  |  | Δ none (95% CI) | -12.5 | -12.5 [")
    assert any("no CI for fastv R=0.5 vqav2_val: no per-sample metric values" in n for n in tables["m"].notes)
    assert "0.0 [" not in lines[fastv + 1]
    rows = list(csv.reader(render(tables, "csv", ci=intervals).splitlines()))
    kinds = [r[3] for r in rows if r[1] == "fastv"]
    assert kinds == ["ours", "ci_low", "ci_high", "delta_none", "delta_none_ci_low", "delta_none_ci_high"]


def pope_samples(predictions, truths):
    return [
        {
            "doc_id": i,
            "answer": p,
            "target": t,
            "metric_value": {"question_id": str(i), "score": float(p == t), "prediction": p, "ground_truth": t},
        }
        for i, (p, t) in enumerate(zip(predictions, truths))
    ]


def mme_samples(scores):
    """Two questions per image, three images per category."""
    categories = ["existence", "count", "OCR"]
    return [
        {
            "doc_id": i,
            "metric_value": {
                "question_id": f"{categories[i // 6]}/{i // 2}.png",
                "category": categories[i // 6],
                "score": float(s),
            },
        }
        for i, s in enumerate(scores)
    ]


def test_non_mean_metrics_are_recomputed_as_lmms_eval_aggregates_them():
    from lmms_eval.tasks.mme.utils import mme_aggregate_results
    from lmms_eval.tasks.pope.utils import pope_aggregate_f1_score

    truths = ["yes", "no"] * 10
    predictions = ["yes", "yes", "no", "no", "yes", "no", "yes", "yes", "yes", "no"] * 2
    pope = pope_samples(predictions, truths)
    f1 = 100 * pope_aggregate_f1_score([s["metric_value"] for s in pope])
    samples, why = sample_set(record("none", 1.0, "pope", f1, samples=pope, metric="pope_f1_score"))
    assert (samples.value, samples.combine) == ("pope", "pooled") and samples.point() == pytest.approx(f1), why

    scores = [1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0]
    mme = mme_samples(scores)
    total = mme_aggregate_results([s["metric_value"] for s in mme])
    samples, why = sample_set(record("none", 1.0, "mme", total, samples=mme, metric="mme_perception_score", scale=1))
    assert (samples.value, samples.combine) == ("mean", "sum") and len(samples.units) == 9, why
    assert samples.point() == pytest.approx(total)

    wrong, why = sample_set(record("none", 1.0, "mme", total + 10, samples=mme, metric="mme_perception_score", scale=1))
    assert wrong is None and "the record's score is" in why


def test_paired_bootstrap_for_pope_f1_and_mme():
    truths = ["yes", "no"] * 20
    base_predictions = ["yes", "yes"] * 20  # says yes to everything: F1 = 66.7
    from gc2bench.results.table import SampleSet

    def f1(predictions):
        counts = SampleSet("pope", "pooled", "pope_f1_score", 100.0, {})
        sums = np.array(
            [
                [
                    sum(p == "yes" and t == "yes" for p, t in zip(predictions, truths)),
                    sum(p == "yes" and t == "no" for p, t in zip(predictions, truths)),
                    sum(p == "no" and t == "yes" for p, t in zip(predictions, truths)),
                ]
            ],
            dtype=float,
        )
        return float(counts.statistic(sums, np.array([len(truths)])))

    records = [
        record(
            "none",
            1.0,
            "pope",
            f1(base_predictions),
            samples=pope_samples(base_predictions, truths),
            metric="pope_f1_score",
        ),
        record("globalcom2", 0.1, "pope", 100.0, samples=pope_samples(truths, truths), metric="pope_f1_score"),
    ]
    scores = [1] * 18
    worse = [0 if i % 6 in (0, 2) else 1 for i in range(18)]  # two of each category's three pairs half wrong
    records += [
        record("none", 1.0, "mme", 600.0, samples=mme_samples(scores), metric="mme_perception_score", scale=1),
        record(
            "globalcom2",
            0.1,
            "mme",
            3 * (50 + 50 + 200) / 3,
            samples=mme_samples(worse),
            metric="mme_perception_score",
            scale=1,
        ),
    ]
    table = collect(records)["m"]
    ci = confidence_intervals(table, iterations=400)
    assert table.notes == []
    low, high = ci.delta[(1, "pope")]
    assert 0 < low < 100 - f1(base_predictions) < high
    assert ci.score[(1, "pope")] == (100.0, 100.0)
    low, high = ci.delta[(1, "mme")]
    assert low < -300.0 < high < 0  # each category loses 2 × (acc 50 + acc+ 100) / 3 images
    assert ci.score[(0, "mme")] == (600.0, 600.0)
    assert all(math.isfinite(v) for v in ci.average[1])


def test_mm_vet_scores_and_mmbench_hits_are_means():
    mmvet = [
        {"doc_id": i, "metric_value": {"question_id": f"v{i}", "score": s, "capabilities": "rec"}}
        for i, s in enumerate([0.0, 0.5, 1.0, 0.7])
    ]
    samples, why = sample_set(record("none", 1.0, "mmvet", 55.0, samples=mmvet, metric="gpt_eval_score", scale=1))
    assert samples.point() == pytest.approx(55.0), why
    main = [{"doc_id": i, "metric_value": {"index": i, "hit": h}} for i, h in enumerate([1, 0, 1, 1])]
    circular = [{"doc_id": 4 + i, "metric_value": {"index": 1_000_000 + i}} for i in range(4)]
    samples, why = sample_set(
        record("none", 1.0, "mmbench_en_dev", 75.0, samples=main + circular, metric="gpt_eval_score", scale=1)
    )
    assert len(samples.units) == 4 and samples.point() == pytest.approx(75.0), why
    unknown, why = sample_set(record("none", 1.0, "x", 1.0, samples=circular, metric="gpt_eval_score"))
    assert unknown is None and why == "no resampling rule for per-sample dicts of gpt_eval_score"


def test_headlines_the_suite_composes_are_recomputed():
    """POPE F1 per category averaged (``average_over``), MME perception + cognition, MMBench's
    circular accuracy with static matching: each equals lmms-eval's own aggregation."""
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator
    from lmms_eval.tasks.mme.utils import mme_aggregate_results
    from lmms_eval.tasks.pope.utils import pope_aggregate_f1_score

    truths = ["yes", "no", "yes", "no", "yes", "no"] * 3
    predictions = [
        "yes",
        "yes",
        "no",
        "no",
        "yes",
        "no",
        "yes",
        "no",
        "yes",
        "no",
        "no",
        "no",
        "yes",
        "yes",
        "yes",
        "yes",
        "no",
        "no",
    ]
    pope = pope_samples(predictions, truths)
    for i, row in enumerate(pope):
        row["group"] = ["adversarial", "popular", "random"][i // 6]
    per_category = [
        pope_aggregate_f1_score([r["metric_value"] for r in pope if r["group"] == g])
        for g in ("adversarial", "popular", "random")
    ]
    headline = 100 * sum(per_category) / 3
    samples, why = sample_set(
        record("none", 1.0, "pope", headline, samples=pope, metric="pope_f1_score (mean over category)")
    )
    assert samples is not None and samples.combine == "mean" and samples.point() == pytest.approx(headline), why
    pooled = 100 * pope_aggregate_f1_score([r["metric_value"] for r in pope])
    assert not math.isclose(pooled, headline)  # pooling would have been a different number
    del pope[0]["group"]
    missing, why = sample_set(
        record("none", 1.0, "pope", headline, samples=pope, metric="pope_f1_score (mean over category)")
    )
    assert missing is None and "lack the `group`" in why

    perception = mme_samples([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0])
    cognition = [
        {
            "doc_id": 100 + i,
            "metric_value": {"question_id": f"code/{i // 2}.png", "category": "code_reasoning", "score": float(s)},
        }
        for i, s in enumerate([1, 1, 0, 1])
    ]
    total = mme_aggregate_results([s["metric_value"] for s in perception]) + mme_aggregate_results(
        [s["metric_value"] for s in cognition]
    )
    samples, why = sample_set(
        record(
            "none",
            1.0,
            "mme",
            total,
            samples=perception + cognition,
            scale=1,
            metric="mme_perception_score+mme_cognition_score",
        )
    )
    assert samples is not None and samples.point() == pytest.approx(total), why

    def question(index, answer, prediction):
        return {
            "index": index,
            "question": "Which?",
            "answer": answer,
            "prediction": prediction,
            "hint": "nan",
            "source": "s",
            "split": "dev",
            "category": "c",
            "L2-category": "l2",
            "A": "cat",
            "B": "dog",
            "C": "cow",
            "D": "nan",
        }

    rows = [
        question(0, "A", "A"),
        question(1, "B", "B. dog"),
        question(2, "C", "A"),
        question(3, "A", "I see a cat"),
        question(1_000_000, "B", "B"),
        question(1_000_001, "C", "B"),
        question(2_000_000, "C", "C"),
    ]
    expected = 100 * MMBench_Evaluator().eval_result(rows, eval_method="static")[0]
    mmbench = [{"doc_id": i, "metric_value": row} for i, row in enumerate(rows)]
    samples, why = sample_set(
        record("none", 1.0, "mmbench_en_dev", expected, samples=mmbench, scale=1, metric="gpt_eval_score")
    )
    assert samples is not None and sorted(samples.units) == [0, 1, 2, 3] and samples.point() == pytest.approx(expected)
    assert expected == 50.0  # 0 and both its variants right, 3's text reads as A; 1 fails a variant, 2 is wrong
