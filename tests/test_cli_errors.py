"""Bad input gives one clear line before any model is loaded (run.py as users run it)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_py(*overrides, cache=None):
    env = dict(os.environ)
    if cache:
        env["GC2BENCH_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "run.py", *overrides, "hydra.run.dir=/tmp/gc2bench-test-hydra"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "value, problem",
    [("0", "is out of range"), ("1.5", "is out of range"), ("abc", "is not a number"), ("-0.1", "is out of range")],
)
def test_bad_ratio(value, problem, tmp_path):
    result = run_py(f"ratio={value}", f"results_dir={tmp_path}", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: ratio={value} {problem}; ratio must be a number with 0 < ratio <= 1 (the share of visual tokens kept)"
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "cache").exists()  # nothing was built or loaded


@pytest.mark.parametrize(
    "group, available", [("compressor", ["globalcom2", "none"]), ("model", ["llava_next_13b", "llava_next_7b", "tiny"])]
)
def test_unknown_group_choice_lists_the_available_ones(group, available):
    result = run_py(f"{group}=nope")
    assert result.returncode != 0
    assert f"Could not find '{group}/nope'" in result.stderr
    for name in available:
        assert f"\t{name}" in result.stderr


def test_missing_model_path_is_named(tmp_path):
    result = run_py("model=llava_next_7b", "model.path=/does/not/exist", f"results_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model.path=/does/not/exist: no such directory")
    assert "Traceback" not in result.stderr


def test_gc2bench_table_on_a_missing_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no such directory" in result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["compressor=globalcom2", "compressor.allocation=bogus"],
            "error: globalcom2: allocation='bogus' is not one of",
        ),
        (["compressor=pdrop", "ratio=0.1"], "error: pdrop: ratio=0.1 cannot be reached with layers=[1, 2, 3]"),
        (["model=tiny_onevision", "compressor=globalcom2"], "has no CLS token; add compressor.score=cosine"),
    ],
)
def test_component_errors_are_one_line(tmp_path, overrides, message):
    result = run_py(*overrides, f"results_dir={tmp_path}", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
