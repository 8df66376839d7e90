"""Every experiment config composes (each job of its sweep builds its compressor), each has its
folder with the reproducing command and the paper's numbers, and one runs as a tiny multirun
on the one-job-per-GPU launcher."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from gc2bench.config import compose_run_config, validate
from gc2bench.results.records import iter_records
from gc2bench.run import suite_entries

from conftest import REPO, SHARED

EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
FOLDERS = sorted(path for path in (REPO / "experiments").iterdir() if path.is_dir())


def compose_config(*overrides):
    return compose_run_config(list(overrides), check=False, return_hydra_config=True)


def sweep_jobs(cfg) -> list[list[str]]:
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    return [
        job
        for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
        for job in batch
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_each_job_validates_and_builds_its_compressor(name):
    text = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_") and f"python run.py -m experiment={name}" in text
    cfg = compose_config(f"experiment={name}")
    assert cfg.results_dir.startswith("results/") and cfg.model.name.startswith("llava_next_")
    assert cfg.model.pipeline == "llava"  # the papers ran the original LLaVA code
    jobs = sweep_jobs(cfg)
    assert jobs
    for job in jobs:
        job_cfg = compose_config(f"experiment={name}", *job)
        validate(job_cfg)
        entries = suite_entries(job_cfg)
        assert sorted(e["task"] for e in entries) == sorted(job_cfg.tasks or list(job_cfg.suite.tasks))
        if name.startswith("aaai"):  # TextVQA per row as AAAI Table 1 ran it (FastV, FasterVLM: TCSVT's cells)
            expected = job_cfg.compressor.name not in ("fastv", "fastervlm", "fastervlm_gc2")
            assert next(e for e in entries if e["task"] == "textvqa_val")["ocr_tokens"] is expected
        elif name.startswith("tcsvt"):
            assert next(e for e in entries if e["task"] == "textvqa_val")["ocr_tokens"] is False
        compressor = instantiate(job_cfg.compressor)
        assert compressor.params()["ratio"] == (1.0 if compressor.name == "none" else job_cfg.ratio)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda path: path.name)
def test_experiment_folder_has_its_commands_and_paper_numbers(folder):
    readme = (folder / "README.md").read_text()
    configs = [name for name in EXPERIMENTS if name.startswith(folder.name)]
    if configs:
        assert all(f"experiment={name}" in readme for name in configs)
    else:  # an analysis, not a sweep of runs
        assert "gc2bench analyze " in readme
    for csv in folder.glob("*.csv"):
        assert csv.name in readme
        shared = SHARED / "paper_tables" / csv.name
        if shared.exists():
            assert csv.read_text() == shared.read_text()


def test_every_experiment_has_a_folder():
    assert all(any(name.startswith(folder.name) for folder in FOLDERS) for name in EXPERIMENTS)


@pytest.mark.slow
def test_an_experiment_runs_as_a_tiny_multirun_one_job_per_gpu(tmp_path, cache_dir):
    """TCSVT Table III's sweep on the tiny model and the smoke suite (two of its allocations: the command
    line narrows the experiment's sweep), two workers on two (pretend) GPUs: every job runs on one."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5", "GC2BENCH_GPU_LOCKS": str(tmp_path / "locks")}
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "experiment=tcsvt_table3",
            "model=tiny",
            "suite=smoke",
            "compressor.allocation=uniform,softmax_sum",
            "tasks=[pope]",
            "suite.limit=1",
            f"results_dir={tmp_path / 'results'}",
            "hydra/launcher=gpus",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep: 2 runs: 2 ran, 0 already done, 0 failed" in result.stdout
    records = [record for _, record in iter_records(tmp_path / "results")]
    assert sorted(r["compressor"]["params"]["allocation"] for r in records) == ["softmax_sum", "uniform"]
    assert {r["ratio"] for r in records} == {0.25}
    assert {r["environment"]["cuda_visible_devices"] for r in records} <= {"3", "5"}
    assert "uses GPU" in result.stderr


def test_paper_tables_are_copied_for_every_table_experiment():
    copied = {csv.name for folder in FOLDERS for csv in folder.glob("*.csv")}
    assert {
        "tcsvt_table1_llava_next_7b.csv",
        "tcsvt_table2_llava_next_13b.csv",
        "tcsvt_table3_allocation_ablation.csv",
        "tcsvt_table4_token_score_ablation.csv",
        "aaai_table1_llava_next_7b.csv",
    } <= copied
    assert Path(REPO / "experiments" / "README.md").exists()
