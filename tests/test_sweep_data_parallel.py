"""Data parallel inside one run: `torchrun --nproc_per_node=2 run.py …` (gloo on CPU) shards the
documents over two ranks and rank 0 writes the same record as one process would."""

import json
import os
import subprocess
import sys

import pytest

from gc2bench.results.records import iter_records

from conftest import REPO

TIMINGS = ("vision_ms", "compression_ms", "prefill_ms", "decode_ms", "peak_memory_mb", "warmup")


def samples(record):
    return sorted(
        ({k: v for k, v in s.items() if k not in TIMINGS} for s in record["samples"]), key=lambda s: s["doc_id"]
    )


@pytest.mark.slow
def test_a_torchrun_run_matches_a_single_process_run(tmp_path, cache_dir):
    overrides = ["compressor=globalcom2", "ratio=0.5", "tasks=[pope]", "hydra.run.dir=" + str(tmp_path / "hydra")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parallel = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "run.py",
            *overrides,
            f"results_dir={tmp_path / 'parallel'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-3000:]
    headers = [line for line in parallel.stdout.splitlines() if line.startswith("tiny · globalcom2 r=0.5 → ")]
    assert len(headers) == 1  # rank 0 only
    single = subprocess.run(
        [sys.executable, "run.py", *overrides, f"results_dir={tmp_path / 'single'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    [(path, sharded)], [(_, whole)] = list(iter_records(tmp_path / "parallel")), list(iter_records(tmp_path / "single"))
    assert sharded["environment"]["world_size"] == 2 and sharded["status"] == "done"
    assert sharded["metrics"] == whole["metrics"] and sharded["tokens"] == whole["tokens"]
    assert samples(sharded) == samples(whole)
    answers = sorted(p.name for p in path.parent.glob(".answers*.jsonl"))
    assert answers == [".answers.rank0.jsonl", ".answers.rank1.jsonl"]
    assert sum(len(p.read_text().splitlines()) for p in path.parent.glob(".answers*.jsonl")) == len(whole["samples"])
    assert json.loads(path.read_text())["efficiency"]["samples"] == len(whole["samples"])
