"""What a run prints: one progress bar per task (gc2bench's), no lmms-eval bars or debug log, an aligned summary."""

import io
import re
import subprocess
import sys

from gc2bench.evaluation.progress import _WithoutLmmsEvalBars
from gc2bench.run import print_summary

from conftest import REPO


def test_filter_drops_only_lmms_eval_bars():
    out = io.StringIO()
    stream = _WithoutLmmsEvalBars(out)
    for text in [
        "\r  0%|          | 0/2 [00:00<?, ?it/s]",
        "\r100%|██████████| 2/2 [00:00<00:00]",
        "\n",
        "\rPostprocessing:  50%|█████     | 1/2",
        "\n",
        "a warning\n",
        "\rGenerating test split: 5 examples",
        "\rmodel.safetensors:  40%|████      | 2/5",
    ]:
        stream.write(text)
    assert out.getvalue() == "a warning\n\rGenerating test split: 5 examples\rmodel.safetensors:  40%|████      | 2/5"


def test_a_run_shows_one_bar_per_task_and_an_aligned_summary(tmp_path, cache_dir):
    done = subprocess.run(
        [
            sys.executable,
            "run.py",
            "compressor=fastv",
            "ratio=0.5",
            "suite=paper10_fixtures",
            "suite.limit=2",
            "tasks=[pope,mme]",
            f"results_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert output.count("gc2bench generate: 100%") >= 2
    assert "Postprocessing" not in output and "NumExpr" not in output and "| DEBUG" not in output
    assert not re.search(r"\r\s*\d+%\|", output)  # lmms-eval's bar without a description
    summary = done.stdout.splitlines()[-3:]
    assert summary[0].startswith("task") and summary[1].startswith("pope  pope_f1_score (mean over category)")
    score_end = summary[0].index("score") + len("score")
    assert summary[1][:score_end].endswith("0.00") and summary[2][:score_end].endswith("50.00")
    assert len({len(line) for line in summary}) == 1


def test_summary_columns_fit_the_longest_metric(capsys):
    def record(task, metric, score):
        return {
            "task": task,
            "metrics": {"metric": metric, "score": score},
            "tokens": {"visual_tokens_before": {"mean": 2880.0}, "visual_tokens_kept": {"mean": 288.0}},
            "efficiency": {"prefill_ms": {"median": 12.5}, "failed_samples": 0},
        }

    print_summary([record("pope", "pope_f1_score (mean over category)", 86.1234), record("mme", "mme", 1500.0)])
    lines = capsys.readouterr().out.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert [line.index("2880.0") for line in lines[1:]] == [lines[1].index("2880.0")] * 2
    assert lines[1].split()[-5:] == ["86.12", "2880.0", "→", "288.0", "12.50"]
