"""A ``-m`` sweep's bookkeeping and GPU claiming: where a job stands in its sweep (``[run 3/10]``),
each job's end-of-job report, the closing summary (``SweepProgress``, a Hydra callback), and one free
GPU per worker process (``claim_gpu``, with ``hydra/launcher=gpus``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SWEEP_SIZE_ENV = "GC2BENCH_SWEEP_SIZE"
SWEEP_ID_ENV = "GC2BENCH_SWEEP_ID"
CLAIM_GPU_ENV = "GC2BENCH_CLAIM_GPU"
GPU_LOCKS_ENV = "GC2BENCH_GPU_LOCKS"
JOB_REPORT = "gc2bench_job.{sweep}.json"  # one per sweep process: sweeps sharing hydra.sweep.dir keep theirs
# Overrides of the runs a restarted sweep found finished and did not launch (hydra/sweeper=gc2bench).
NOT_LAUNCHED: list[list[str]] = []


class SweepJob:
    """Where this job stands in a ``-m`` sweep (number, total), and its end-of-job report."""

    def __init__(
        self,
        num: int | None = None,
        total: int | None = None,
        output_dir: str | None = None,
        overrides: list[str] | None = None,
    ):
        self.num, self.total, self.output_dir, self.overrides = num, total, output_dir, overrides or []

    @classmethod
    def current(cls) -> SweepJob:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return cls()
        hydra_cfg = HydraConfig.get()
        total = os.environ.get(SWEEP_SIZE_ENV)
        return cls(
            hydra_cfg.job.num,
            int(total) if total else None,
            hydra_cfg.runtime.output_dir,
            list(hydra_cfg.overrides.task),
        )

    @property
    def in_sweep(self) -> bool:
        return self.num is not None

    @property
    def label(self) -> str:
        if not self.in_sweep:
            return ""
        return f"[run {self.num + 1}/{self.total}]" if self.total else f"[run {self.num + 1}]"

    def report(self, status: str, error: str | None) -> None:
        """``gc2bench_job.<sweep id>.json`` in the job's output directory, for the sweep's closing summary."""
        if not self.in_sweep:
            return
        report = {
            "sweep": os.environ.get(SWEEP_ID_ENV),
            "num": self.num,
            "overrides": self.overrides,
            "status": status,
            "error": error,
        }
        path = Path(self.output_dir) / JOB_REPORT.format(sweep=report["sweep"])
        with contextlib.suppress(OSError):  # a full disk must not hide the run's own error
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report))


class SweepProgress(Callback):
    """Hydra callback: announces a sweep's size (so jobs print ``[run 3/10]``) and ends it with
    a summary of done, skipped (done before) and failed runs; the process then exits 1 if any
    run failed or did not report."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ[SWEEP_ID_ENV] = uuid.uuid4().hex
        NOT_LAUNCHED.clear()
        total = sweep_size(config)
        if total:
            os.environ[SWEEP_SIZE_ENV] = str(total)
        print(f"sweep: {total or 'several'} runs, job outputs in {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = os.environ.get(SWEEP_ID_ENV)
        reports = []
        for path in Path(str(config.hydra.sweep.dir)).glob(f"**/{JOB_REPORT.format(sweep=sweep)}"):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                report = json.loads(path.read_text())
                if report.get("sweep") == sweep:
                    reports.append(report)
        counts = {status: sum(r["status"] == status for r in reports) for status in ("done", "skipped", "failed")}
        missing = int(os.environ.get(SWEEP_SIZE_ENV, len(reports))) - len(reports)
        counts["skipped"] += len(NOT_LAUNCHED)
        total = len(reports) + len(NOT_LAUNCHED) + max(missing, 0)
        line = f"sweep: {total} runs: {counts['done']} ran, {counts['skipped']} already done, {counts['failed']} failed"
        print(line + (f", {missing} did not report (killed?)" if missing > 0 else ""), flush=True)
        for report in sorted(reports, key=lambda r: r["num"]):
            if report["status"] == "failed":
                print(
                    f"  failed run {report['num'] + 1}: {' '.join(report['overrides'])}: {report['error']}", flush=True
                )
        if counts["failed"] or missing > 0:
            print("sweep: run the same command again to retry what failed; finished runs are skipped", flush=True)
            print(
                f"error: sweep: {counts['failed'] + max(missing, 0)} of {total} runs did not finish",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)  # Hydra turns a callback's exceptions into warnings; the sweep is over here anyway


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper makes of this multirun config (None for other sweepers)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(("BasicSweeper", "ResumingSweeper")):
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))


_claimed_gpu = None


def claim_gpu() -> str | None:
    """With ``GC2BENCH_CLAIM_GPU=1`` (``hydra/launcher=gpus`` sets it): this process takes one free
    GPU of ``CUDA_VISIBLE_DEVICES`` (or of all GPUs) for its lifetime and sees only that one.

    A GPU is taken by locking ``<lock dir>/gpu<id>.lock``; the lock goes when the process exits.
    """
    global _claimed_gpu
    if os.environ.get(CLAIM_GPU_ENV) != "1" or _claimed_gpu is not None:
        return None if _claimed_gpu is None else _claimed_gpu[0]
    import fcntl
    import tempfile

    pool = visible_gpus()
    if not pool:
        print("gpus: no GPU visible; running on what model.device says", file=sys.stderr, flush=True)
        return None
    locks = Path(os.environ.get(GPU_LOCKS_ENV) or Path(tempfile.gettempdir()) / f"gc2bench-gpus-{os.getuid()}")
    locks.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for gpu in pool:
            handle = open(locks / f"gpu{gpu}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _claimed_gpu = (gpu, handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            print(f"gpus: this worker (pid {os.getpid()}) uses GPU {gpu}", file=sys.stderr, flush=True)
            return gpu
        if not waiting:
            print(f"gpus: all of {','.join(pool)} are taken; waiting for one", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(2)


def visible_gpus() -> list[str]:
    """GPU ids from ``CUDA_VISIBLE_DEVICES``, else from ``nvidia-smi -L``; empty without GPUs."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def sweep_name() -> str | None:
    """The sweep directory's name inside a ``-m`` sweep (the tracking group), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(str(HydraConfig.get().sweep.dir)).name
    return None
