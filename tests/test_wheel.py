"""A built wheel carries the configs and the lock, and runs the main job outside the checkout."""

import json
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_runs_the_main_job(tmp_path, cache_dir):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("gc2bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.removeprefix("gc2bench/conf/") for name in names if name.startswith("gc2bench/conf/")}
    in_checkout = {str(path.relative_to(REPO / "conf")) for path in (REPO / "conf").rglob("*.yaml")}
    assert in_checkout and shipped >= in_checkout
    assert "gc2bench/requirements-lock.txt" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        "PYTHONPATH": str(target),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GC2BENCH_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    code = (
        "import gc2bench, sys; assert gc2bench.__file__.startswith(sys.argv[1]), gc2bench.__file__; "
        "from gc2bench.cli import main; sys.argv = ['gc2bench'] + sys.argv[2:]; sys.exit(main())"
    )
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(target),
            "run",
            "compressor=globalcom2",
            "ratio=0.1",
            "suite.limit=2",
            "tasks=[pope]",
            f"results_dir={results}",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (record_file,) = results.rglob("pope.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "done" and record["compressor"]["name"] == "globalcom2"
    assert record["versions"]["lock"]["lock"] == "gc2bench/requirements-lock.txt"
