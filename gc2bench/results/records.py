"""Run records: one JSON file per (model, compressor with its parameters, ratio, task).

A record is written atomically (temporary file in the same directory, then ``os.replace``),
so a crash never leaves a half-written record and a restarted sweep can trust what exists.
A run directory also holds a lock (one process runs it at a time) and an answer cache
(``.answers*.jsonl``, ``gc2bench.evaluation.answer_cache``): each answer is appended as soon as it
is generated, so a task killed half-way resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

RECORD_FORMAT = "gc2bench.record/1"
REQUIRED_KEYS = ("model", "compressor", "ratio", "task", "metrics", "tokens", "efficiency", "versions", "config",
                 "status")


def params_digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_dir(results_dir: str | Path, model_name: str, compressor_name: str, params: dict,
            model: dict | None = None, protocol: dict | None = None) -> Path:
    """``<results_dir>/<model name>/<compressor>_r<ratio>_<hash>``: a hash of all compressor parameters, of
    every key of the ``model`` config (another seed, path, dtype, … is another directory) and of the run's
    ``protocol`` (suite, its scoring keys, seed: ``identity.directory_protocol``), so runs that score
    differently never share (and overwrite) one record file."""
    ratio = params.get("ratio", 1.0)
    if model is None and protocol is None:
        key = params_digest(params)
    else:
        key = params_digest({"compressor": params, "model": model, **({"protocol": protocol} if protocol else {})})
    return Path(results_dir) / model_name / f"{compressor_name}_r{ratio:g}_{key}"


def record_path(directory: Path, task: str) -> Path:
    return directory / f"{task}.json"


def write_record(path: str | Path, record: dict) -> Path:
    """Write ``record`` to ``path`` atomically; the directory is created if needed."""
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"record for {path} lacks keys {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"format": RECORD_FORMAT, **record}, file, indent=1, default=str)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_record(path: str | Path) -> dict | None:
    """The record at ``path``, or None if it is not a gc2bench record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def remove_orphaned_tmp(directory: str | Path) -> list[Path]:
    """Delete ``<task>.json.*.tmp`` files a killed ``write_record`` left (call with the run lock held)."""
    removed = sorted(Path(directory).glob("*.json.*.tmp"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def record_problem(record) -> str | None:
    """What makes a ``done`` record unusable in a table (missing model / compressor, bad score), or None."""
    if not isinstance(record.get("model"), dict) or not isinstance(record["model"].get("name"), str):
        return "no model name"
    if not isinstance(record.get("compressor"), dict) or not isinstance(record["compressor"].get("name"), str):
        return "no compressor name"
    if not isinstance(record.get("task"), str):
        return "no task"
    try:
        float(record.get("ratio"))
    except (TypeError, ValueError):
        return f"ratio={record.get('ratio')!r} is not a number"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return f"metrics={metrics!r} is not a mapping"
    score = metrics.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        return f"metrics.score={score!r} is not a number"
    return None


def usable_records(directory: str | Path) -> tuple[list[dict], list[str]]:
    """The done records under ``directory`` a table can use, and one line per file left out (a record
    that cannot be read or lacks what a table needs; JSON files outside run directories are not records)."""
    records, skipped = [], []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            if (path.parent / ".lock").exists():  # a run directory: this was a record
                skipped.append(f"{path}: not readable JSON ({type(error).__name__}); left out")
            continue
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("status") != "done":
            continue
        problem = record_problem(record)
        if problem:
            skipped.append(f"{path}: {problem}; left out")
            continue
        records.append(record)
    return records, skipped


def iter_records(directory: str | Path):
    """All records under ``directory`` (recursively), in path order."""
    for path in sorted(Path(directory).rglob("*.json")):
        record = read_record(path)
        if record is not None:
            yield path, record


VERSIONED_PACKAGES = ("gc2bench", "torch", "transformers", "lmms_eval", "hydra-core", "omegaconf", "accelerate",
                      "datasets", "numpy", "pillow", "wandb")


def package_versions() -> dict:
    """Versions of the packages that shape a result, and ``lock``: the environment checked against the lock."""
    from gc2bench.environment import lock_check

    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["lock"] = lock_check()
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict:
    """Where a run ran: host, accelerator, the launcher's job ids and the data-parallel rank."""
    env = {"hostname": socket.gethostname(), "platform": platform.platform(),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "rank": int(os.environ.get("RANK", 0)),
           "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


@contextlib.contextmanager
def run_lock(directory: str | Path):
    """Hold ``<directory>/.lock`` so one process at a time runs this directory's tasks (parallel
    sweeps: a second job of the same run waits, then finds the records and skips). The kernel
    releases the lock when the process dies."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is running {directory}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
