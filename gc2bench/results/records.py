"""Run records: one JSON file per (model, compressor with its parameters, ratio, task).

A record is written atomically (temporary file in the same directory, then ``os.replace``),
so a crash never leaves a half-written record and a restarted sweep can trust what exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

RECORD_FORMAT = "gc2bench.record/1"
REQUIRED_KEYS = ("model", "compressor", "ratio", "task", "metrics", "tokens", "efficiency", "versions", "config",
                 "status")


def params_digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_dir(results_dir: str | Path, model_name: str, compressor_name: str, params: dict) -> Path:
    """``<results_dir>/<model>/<compressor>_r<ratio>_<hash of all compressor parameters>``."""
    ratio = params.get("ratio", 1.0)
    return Path(results_dir) / model_name / f"{compressor_name}_r{ratio:g}_{params_digest(params)}"


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


def iter_records(directory: str | Path):
    """All records under ``directory`` (recursively), in path order."""
    for path in sorted(Path(directory).rglob("*.json")):
        record = read_record(path)
        if record is not None:
            yield path, record


def is_done(path: str | Path) -> bool:
    record = read_record(path)
    return record is not None and record.get("status") == "done"


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("gc2bench", "torch", "transformers", "lmms_eval", "hydra-core"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
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
