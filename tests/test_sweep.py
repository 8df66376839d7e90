"""Sweeps that survive crashes: a killed sweep finishes on restart with every run done exactly
once, a half-done task resumes from its answer cache, a failing run is recorded and does not
stop the others (also under submitit's local executor), and the GPU pool gives one GPU per worker."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from omegaconf import open_dict

from gc2bench.config import compose_run_config
from gc2bench.results.records import iter_records, read_record, record_path
from gc2bench.run import RunFailed, run, run_job
from gc2bench.sweep import sweep_size

from conftest import REPO

TASKS = ("pope", "vqav2_val")


def compose_config(*overrides, hydra=False):
    return compose_run_config(list(overrides), check=False, return_hydra_config=hydra)


def run_py(*args, env=None, timeout=300, **kwargs):
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        **kwargs,
    )


def records_by_run(results):
    return Counter((r["compressor"]["name"], r["ratio"], r["task"], r["status"]) for _, r in iter_records(results))


# -- the "done when": kill a sweep mid-way, restart it ----------------------------------


@pytest.mark.slow
def test_a_killed_sweep_finishes_on_restart_with_each_run_done_once(tmp_path, cache_dir):
    results = tmp_path / "results"
    sweep = ["-m", "compressor=none,globalcom2,fastv", "ratio=0.5,0.25", "suite.limit=2", f"results_dir={results}"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "run.py", *sweep, f"hydra.sweep.dir={tmp_path / 'sweep1'}"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(list(results.rglob("*.json"))) < 3:  # kill after 3 of the 10 task records
        assert first.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "no records after 240 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {path: path.stat().st_mtime_ns for path, _ in iter_records(results)}
    assert 3 <= len(before) < 10

    second = run_py(*sweep, f"hydra.sweep.dir={tmp_path / 'sweep2'}")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    expected = {
        (m, r, t, "done")
        for m, r in [("none", 1.0), ("globalcom2", 0.5), ("globalcom2", 0.25), ("fastv", 0.5), ("fastv", 0.25)]
        for t in TASKS
    }
    counts = records_by_run(results)
    assert set(counts) == expected and set(counts.values()) == {1}
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items())  # nothing redone
    assert not list(results.rglob("*.tmp"))
    summary = re.search(r"sweep: 6 runs: (\d+) ran, (\d+) already done, 0 failed\n", second.stdout)
    assert summary, second.stdout[-3000:]
    ran, already = map(int, summary.groups())
    assert ran + already == 6 and ran >= 3  # 3 records cannot finish more than 3 of the 5 runs
    if already:
        assert f"sweep: {already} runs already finished, not launched; {ran} to run" in second.stdout
    assert f"[run {ran}/{ran}]" in second.stdout

    table = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", str(results), "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = {(line.split(",")[1], float(line.split(",")[2])) for line in table[1:] if line.strip()}
    assert rows == {(m, r) for m, r, _, _ in expected}


def test_the_baseline_runs_once_whatever_the_ratio(tmp_path, cache_dir):
    first = run(
        compose_config(f"results_dir={tmp_path}", "compressor=none", "ratio=0.5", "tasks=[pope]", "suite.limit=1")
    )
    assert [r["ratio"] for r in first] == [1.0]
    assert (
        run(compose_config(f"results_dir={tmp_path}", "compressor=none", "ratio=0.1", "tasks=[pope]", "suite.limit=1"))
        == []
    )


def test_another_limit_runs_apart_and_another_entry_is_redone(tmp_path, cache_dir, capsys):
    overrides = [f"results_dir={tmp_path}", "tasks=[pope]"]
    [first] = run(compose_config(*overrides, "suite.limit=1"))
    assert run(compose_config(*overrides, "suite.limit=1")) == []
    [other] = run(compose_config(*overrides, "suite.limit=2"))  # its own directory: the limit=1 record stays
    assert other["efficiency"]["samples"] == 2 and other["limit"] == 2
    assert len(list(tmp_path.rglob("pope.json"))) == 2
    assert run(compose_config(*overrides, "suite.limit=1")) == []
    assert len(run(compose_config(*overrides, "suite.limit=2", "suite.tasks.pope.scale=1"))) == 1
    assert "redo pope: its record was made with the suite entry" in capsys.readouterr().out


# -- resume inside a task -----------------------------------------------------------------------


def test_a_task_killed_half_way_resumes_from_its_answer_cache(tmp_path, cache_dir, monkeypatch):
    from gc2bench.models.adapter import VisionStageAdapter

    original = VisionStageAdapter.generate
    calls = []

    def generate(self, texts, images, **kwargs):
        calls.append(len(texts))
        if len(calls) == kill_at:
            raise KeyboardInterrupt  # as if the process were killed while answering this sample
        return original(self, texts, images, **kwargs)

    monkeypatch.setattr(VisionStageAdapter, "generate", generate)
    overrides = ["compressor=globalcom2", "ratio=0.5", "tasks=[pope]"]
    kill_at = None
    reference = run(compose_config(f"results_dir={tmp_path / 'whole'}", *overrides))[0]
    samples = len(reference["samples"])
    assert samples == sum(calls) >= 4

    cfg = compose_config(f"results_dir={tmp_path / 'killed'}", *overrides)
    calls.clear()
    kill_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    run_dir = next((tmp_path / "killed").glob("tiny/globalcom2_*"))
    assert not (run_dir / "pope.json").exists()
    assert len((run_dir / ".answers.jsonl").read_text().splitlines()) == 2

    calls.clear()
    kill_at = None
    resumed = run(cfg)[0]
    assert sum(calls) == samples - 2
    assert resumed["timing"]["answers_from_cache"] == 2
    assert resumed["metrics"] == reference["metrics"]
    strip = {"vision_ms", "compression_ms", "prefill_ms", "decode_ms", "peak_memory_mb", "warmup"}
    assert [{k: v for k, v in s.items() if k not in strip} for s in resumed["samples"]] == [
        {k: v for k, v in s.items() if k not in strip} for s in reference["samples"]
    ]


# -- failures -----------------------------------------------------------------------------------


def test_a_failing_task_is_recorded_and_retried(tmp_path, cache_dir, monkeypatch):
    import gc2bench.evaluation.suite as suite

    original = suite.evaluate_task

    def evaluate_task(lm, entry, **kwargs):
        if entry["task"] == "pope":
            raise RuntimeError("boom")
        return original(lm, entry, **kwargs)

    monkeypatch.setattr(suite, "evaluate_task", evaluate_task)
    cfg = compose_config(f"results_dir={tmp_path}", "suite.limit=1")
    with pytest.raises(RunFailed, match=r"1 of 2 tasks failed .*pope \(RuntimeError: boom\)"):
        run(cfg)
    run_dir = next(tmp_path.glob("tiny/none_*"))
    pope = read_record(record_path(run_dir, "pope"))
    assert pope["status"] == "failed" and pope["error"] == "RuntimeError: boom" and "boom" in pope["traceback"]
    assert pope["config"]["model"]["name"] == "tiny" and pope["versions"]["torch"]
    assert read_record(record_path(run_dir, "vqav2_val"))["status"] == "done"

    monkeypatch.setattr(suite, "evaluate_task", original)
    assert [r["task"] for r in run(cfg)] == ["pope"]
    assert read_record(record_path(run_dir, "pope"))["status"] == "done"


@pytest.mark.slow
def test_a_run_whose_model_cannot_load_does_not_stop_the_sweep(tmp_path, cache_dir):
    """Under submitit's local executor: real jobs, each in its own process."""
    results = tmp_path / "results"
    env = {"HF_HOME": str(tmp_path / "empty-hf-home")}  # llava_next_7b is surely not cached: it cannot load
    result = run_py(
        "-m",
        "hydra/launcher=submitit_local",
        "model=llava_next_7b,tiny",
        "tasks=[pope]",
        "suite.limit=1",
        f"results_dir={results}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env=env,
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep: 2 runs: 1 ran, 0 already done, 1 failed" in result.stdout
    assert "failed run 1: model=llava_next_7b" in result.stdout
    assert result.stderr.strip().endswith("error: sweep: 1 of 2 runs did not finish")
    logs = "".join(path.read_text() for path in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert "[run 2/2] tiny · none r=1" in logs  # the job ran in submitit's own process
    failed = read_record(next(results.glob("llava_next_7b/none_*/pope.json")))
    assert failed["status"] == "failed" and failed["error"].startswith("ModelLoadError: model.path=llava-hf/")
    assert read_record(next(results.glob("tiny/none_*/pope.json")))["status"] == "done"


@pytest.mark.slow
def test_a_restarted_sweep_does_not_launch_finished_runs(tmp_path, cache_dir):
    """Under submitit's local executor (as on SLURM): finished runs get no job at all."""
    results = tmp_path / "results"
    sweep = [
        "-m",
        "hydra/launcher=submitit_local",
        "compressor=none,random",
        "ratio=0.5,0.25",
        "tasks=[pope]",
        "suite.limit=1",
        f"results_dir={results}",
    ]
    first = run_py(*sweep, f"hydra.sweep.dir={tmp_path / 'sweep1'}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "sweep: 4 runs: 3 ran, 1 already done, 0 failed" in first.stdout  # the second none job skipped
    second = run_py(
        *sweep[:2], "compressor=none,random", "ratio=0.5,0.25,0.1", *sweep[4:], f"hydra.sweep.dir={tmp_path / 'sweep2'}"
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "sweep: 5 runs already finished, not launched; 1 to run" in second.stdout
    assert "sweep: 6 runs: 1 ran, 5 already done, 0 failed" in second.stdout
    job_logs = list((tmp_path / "sweep2" / ".submitit").rglob("*_log.out"))
    assert len(job_logs) == 1
    logs = job_logs[0].read_text()
    assert "[run 1/1] tiny · random r=0.1" in logs
    assert {(m, r) for m, r, _, _ in records_by_run(results)} == {
        ("none", 1.0),
        ("random", 0.5),
        ("random", 0.25),
        ("random", 0.1),
    }
    third = run_py(*sweep, f"hydra.sweep.dir={tmp_path / 'sweep3'}", "overwrite=true")
    # overwrite=true launches every run again, the baseline once
    assert "sweep: 1 runs writing to an earlier run's record directory, not launched; 3 to run" in third.stdout
    assert "sweep: 4 runs: 3 ran, 1 already done, 0 failed" in third.stdout


@pytest.mark.slow
def test_the_sweeper_launches_what_the_job_context_decides(tmp_path, cache_dir):
    """A results_dir that only the job can resolve, and a skipped task (no API key here), are launched."""
    results = tmp_path / "results"
    skipped = run(compose_config("suite=paper10_fixtures", "tasks=[mmvet]", f"results_dir={results}"))
    assert [r["status"] for r in skipped] == ["skipped"]
    again = run_py(
        "-m",
        "suite=paper10_fixtures",
        "tasks=[mmvet]",
        f"results_dir={results}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"OPENAI_API_KEY": ""},
    )
    assert again.returncode == 0 and "not launched" not in again.stdout and "sweep: 1 runs: " in again.stdout
    assert "skip mmvet: mmvet is scored by an API judge" in again.stdout  # the job itself decided
    hydra_dir = run_py(
        "-m",
        "tasks=[pope]",
        "suite.limit=1",
        "results_dir=${hydra:runtime.output_dir}/results",
        f"hydra.sweep.dir={tmp_path / 'sweep2'}",
    )
    assert hydra_dir.returncode == 0, hydra_dir.stdout[-2000:] + hydra_dir.stderr[-2000:]
    assert "sweep: 1 runs: 1 ran" in hydra_dir.stdout


def test_a_bad_config_in_a_sweep_fails_that_job_with_one_line(tmp_path, capsys):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = compose_config("compressor=pdrop", "ratio=0.1", f"results_dir={tmp_path}", hydra=True)
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.job.num, cfg.hydra.runtime.output_dir = RunMode.MULTIRUN, 2, str(tmp_path / "2")
    HydraConfig.instance().set_config(cfg)
    try:
        assert run_job(cfg) == "failed"  # returns: Hydra goes on with the sweep's other jobs
    finally:
        HydraConfig.instance().cfg = None
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: [run 3] pdrop: ratio=0.1 cannot be reached")
    report = json.loads(next((tmp_path / "2").glob("gc2bench_job.*.json")).read_text())
    assert report["status"] == "failed" and report["num"] == 2 and "cannot be reached" in report["error"]


# -- sweep bookkeeping and launchers --------------------------------------------------------------


def test_sweep_size_counts_command_line_and_experiment_sweeps():
    cfg = compose_config("experiment=tcsvt_table3", "suite=smoke", hydra=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["experiment=tcsvt_table3", "suite=smoke"]
        assert sweep_size(cfg) == 4  # the experiment's four allocations
        cfg.hydra.overrides.task = ["compressor.allocation=uniform,n_topk", "ratio=0.5,0.25,0.1", "seed=1"]
        assert sweep_size(cfg) == 6  # the command line wins over the experiment's sweep


def test_launcher_configs():
    gpus = compose_config("hydra/launcher=gpus", "hydra.launcher.n_jobs=4", hydra=True).hydra
    assert gpus.launcher._target_.endswith("JoblibLauncher") and gpus.launcher.n_jobs == 4
    assert gpus.job.env_set.GC2BENCH_CLAIM_GPU == "1"
    slurm = compose_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.gpus_per_node, slurm.timeout_min) == ("gpu", 1, 240)
    assert slurm.max_num_timeout > 0  # a timed-out run is requeued and resumes


CLAIM = (
    "import os, sys, time; from gc2bench.sweep import claim_gpu; print(claim_gpu(), os.environ['CUDA_VISIBLE_DEVICES'],"
    " flush=True); time.sleep(float(sys.argv[1]))"
)


@pytest.mark.slow
def test_each_worker_claims_its_own_gpu_and_waits_when_none_is_free(tmp_path):
    env = {**os.environ, "GC2BENCH_CLAIM_GPU": "1", "GC2BENCH_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": "3,5"}

    def claimer(hold):
        process = subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(hold)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return process, process.stdout.readline().split()

    first, first_gpu = claimer(4)
    second, second_gpu = claimer(30)
    assert {first_gpu[0], second_gpu[0]} == {"3", "5"} and first_gpu[0] == first_gpu[1]
    started = time.monotonic()
    third, third_gpu = claimer(0)  # both taken: waits until the first exits
    assert third_gpu == first_gpu and time.monotonic() - started > 1
    assert "all of 3,5 are taken; waiting" in third.stderr.read()
    second.kill()
    for process in (first, second, third):
        process.wait()


@pytest.mark.slow
def test_the_aaai_analyses_run_in_sweeps(tmp_path, cache_dir):
    """PruMerge over ratios and FastV over crop orders (issue 8): every run done once, distinct table rows."""
    results = tmp_path / "results"
    common = ["tasks=[pope]", "suite.limit=1", f"results_dir={results}"]
    merge = run_py("-m", "compressor=prumerge", "ratio=0.5,0.25", *common, f"hydra.sweep.dir={tmp_path / 's1'}")
    assert merge.returncode == 0 and "sweep: 2 runs: 2 ran, 0 already done, 0 failed" in merge.stdout, merge.stderr
    orders = run_py(
        "-m",
        "compressor=fastv",
        "compressor.crop_order=sequential,reversed",
        "ratio=0.5",
        *common,
        f"hydra.sweep.dir={tmp_path / 's2'}",
    )
    assert orders.returncode == 0 and "sweep: 2 runs: 2 ran, 0 already done, 0 failed" in orders.stdout, orders.stderr
    records = [record for _, record in iter_records(results)]
    assert sorted(
        (r["compressor"]["name"], r["ratio"], r["compressor"]["params"].get("crop_order")) for r in records
    ) == [("fastv", 0.5, "reversed"), ("fastv", 0.5, "sequential"), ("prumerge", 0.25, None), ("prumerge", 0.5, None)]
    assert all(r["status"] == "done" for r in records)
    table = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", str(results)], capture_output=True, text=True, check=True
    ).stdout
    assert "fastv (crop_order=reversed)" in table and "fastv (crop_order=sequential)" in table
