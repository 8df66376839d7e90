"""The papers' benchmarks: their keys and column names, and which lmms-eval tasks score them."""

from __future__ import annotations

# The papers' benchmark keys (the column names of ../shared/paper_tables) in TCSVT Table I's order.
PAPER_BENCHMARKS = {"vqav2": "VQAv2", "gqa": "GQA", "vizwiz": "VizWiz", "sqa": "SQA", "textvqa": "TextVQA",
                    "pope": "POPE", "mme": "MME", "mmbench": "MMB", "mmbench_cn": "MMB-CN", "mmvet": "MM-Vet"}
TASK_BENCHMARK = {
    "vqav2_val": "vqav2", "vqav2_val_lite": "vqav2", "gqa": "gqa", "gqa_lite": "gqa",
    "vizwiz_vqa_val": "vizwiz", "vizwiz_vqa_val_lite": "vizwiz", "scienceqa_img": "sqa",
    "textvqa_val": "textvqa", "textvqa_val_lite": "textvqa", "pope": "pope", "mme": "mme",
    "mmbench_en_dev": "mmbench", "mmbench_en_dev_lite": "mmbench", "mmbench_en_dev_static": "mmbench",
    "mmbench_cn_dev": "mmbench_cn", "mmbench_cn_dev_lite": "mmbench_cn", "mmvet": "mmvet",
}


def benchmark_of(task: str) -> str | None:
    """The papers' benchmark key of an lmms-eval task name (``vqav2_val`` → ``vqav2``), or None."""
    return TASK_BENCHMARK.get(task)


def display_name(task: str) -> str:
    """A task's column name: the paper's benchmark name (``VQAv2``, ``MMB lite``), else the task name."""
    benchmark = benchmark_of(task)
    if benchmark is None:
        return task
    suffix = next((f" {s}" for s in ("lite", "static") if task.endswith("_" + s)), "")
    return PAPER_BENCHMARKS[benchmark] + suffix
