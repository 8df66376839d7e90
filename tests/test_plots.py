"""`gc2bench plot`: Average % vs ratio (Fig. 1) and τ / α sensitivity (Fig. 3) from synthetic records."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gc2bench.results.plots import _plotted_lines, _sweeps, plot_ratio, plot_sensitivity
from gc2bench.results.records import record_path, run_dir, write_record
from gc2bench.results.table import collect

TASKS = {"gqa": 64.0, "pope": 86.0}
GLOBALCOM2_RED = (214, 39, 40)  # matplotlib's C3
FASTV_BLUE = (31, 119, 180)  # C0


def record(method, ratio, task, score, params=None, model="tiny"):
    return {
        "model": {"name": model},
        "compressor": {"name": method, "params": {"ratio": ratio, **(params or {})}},
        "ratio": ratio,
        "task": task,
        "metrics": {"score": score, "metric": "exact_match"},
        "tokens": {},
        "efficiency": {},
        "versions": {},
        "config": {},
        "status": "done",
    }


def sweep_records(model="tiny"):
    """A baseline, FastV and GlobalCom² at three ratios (τ = 10, α = 0.5), and τ / α sweeps at R = 0.25, 0.1."""
    records = [record("none", 1.0, task, base, model=model) for task, base in TASKS.items()]
    for ratio in (0.5, 0.25, 0.1):
        for task, base in TASKS.items():
            records.append(record("fastv", ratio, task, base * (0.7 + 0.5 * ratio), model=model))
            records.append(
                record(
                    "globalcom2", ratio, task, base * (0.85 + 0.25 * ratio), {"tau": 10.0, "alpha": 0.5}, model=model
                )
            )
    for ratio in (0.25, 0.1):
        for tau in (1.0, 5.0, 20.0):
            for task, base in TASKS.items():
                records.append(
                    record(
                        "globalcom2",
                        ratio,
                        task,
                        base * (0.9 - 0.01 * abs(np.log(tau / 10))),
                        {"tau": tau, "alpha": 0.5},
                        model=model,
                    )
                )
        for alpha in (0.0, 1.0):
            for task, base in TASKS.items():
                records.append(
                    record(
                        "globalcom2",
                        ratio,
                        task,
                        base * (0.88 + 0.01 * alpha),
                        {"tau": 10.0, "alpha": alpha},
                        model=model,
                    )
                )
    return records


def write_all(directory, records):
    for r in records:
        write_record(
            record_path(
                run_dir(directory, r["model"]["name"], r["compressor"]["name"], r["compressor"]["params"]), r["task"]
            ),
            r,
        )
    return directory


def pixels_near(path, colour, tolerance=30):
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(colour)).max(axis=-1) <= tolerance).sum())


def check_png(path):
    image = Image.open(path)
    assert image.format == "PNG"
    width, height = image.size
    assert 700 <= width <= 4000 and 400 <= height <= 3000
    grey = np.asarray(image.convert("L"))
    assert (grey < 250).mean() > 0.02 and grey.std() > 10  # drawn on, not blank


def test_ratio_plot_shows_one_line_per_method_and_highlights_globalcom2(tmp_path):
    tables = collect(sweep_records())
    notes = []
    path = plot_ratio(tables, tmp_path / "ratio.png", notes)
    check_png(path)
    assert pixels_near(path, GLOBALCOM2_RED) > 300 and pixels_near(path, FASTV_BLUE) > 100
    lines = _plotted_lines(tables["tiny"], [r for r in tables["tiny"].rows if r.method != "none"], [])
    assert {label: [ratio for ratio, _ in points] for label, points in lines.items()} == {
        "fastv": [0.5, 0.25, 0.1],
        "globalcom2 (tau=10, alpha=0.5)": [0.5, 0.25, 0.1],
    }
    assert any("leaves out 5 run at fewer" in note for note in notes)  # the sweeps: 3 τ + 2 α variants


def test_sensitivity_panels_hold_the_sweeps_with_the_other_parameter_fixed(tmp_path):
    rows = [r for r in collect(sweep_records())["tiny"].rows if r.method == "globalcom2"]
    tau = _sweeps(rows, "tau")
    assert sorted(tau) == [0.1, 0.25]
    assert [value for value, _ in sorted(tau[0.25])] == [1.0, 5.0, 10.0, 20.0]
    assert all(row.params["alpha"] == 0.5 for points in tau.values() for _, row in points)
    alpha = _sweeps(rows, "alpha")
    assert [value for value, _ in sorted(alpha[0.1])] == [0.0, 0.5, 1.0]
    assert all(row.params["tau"] == 10.0 for points in alpha.values() for _, row in points)

    path = plot_sensitivity(collect(sweep_records()), tmp_path / "sensitivity.png")
    check_png(path)
    assert pixels_near(path, FASTV_BLUE) > 200  # the R = 0.25 lines (C0)


def test_two_models_get_a_panel_each(tmp_path):
    tables = collect(sweep_records("a") + sweep_records("b"))
    one = Image.open(plot_ratio({"a": tables["a"]}, tmp_path / "one.png")).size
    two = Image.open(plot_ratio(tables, tmp_path / "two.png")).size
    assert two[0] > 1.8 * one[0] and two[1] == one[1]
    tall = Image.open(plot_sensitivity(tables, tmp_path / "s.png")).size
    assert tall[1] > 1.8 * Image.open(plot_sensitivity({"a": tables["a"]}, tmp_path / "s1.png")).size[1]


def test_cli_plot(tmp_path):
    results = write_all(tmp_path / "results", sweep_records())
    for kind in ("ratio", "sensitivity"):
        out = tmp_path / f"{kind}.png"
        done = subprocess.run(
            [sys.executable, "-m", "gc2bench.cli", "plot", str(results), "--kind", kind, "--out", str(out)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        check_png(out)


@pytest.mark.parametrize(
    "records, arguments, message",
    [
        ([record("globalcom2", 0.1, "gqa", 50.0)], ["--kind", "ratio"], "no uncompressed (compressor=none) records"),
        (
            [record("none", 1.0, "gqa", 60.0), record("fastv", 0.1, "gqa", 50.0)],
            ["--kind", "sensitivity"],
            "no finished globalcom2 records",
        ),
        ([record("none", 1.0, "gqa", 60.0)], ["--kind", "ratio", "--out", "figure.jpg"], "must be a .png file"),
    ],
)
def test_cli_plot_errors_are_one_line(tmp_path, records, arguments, message):
    results = write_all(tmp_path / "results", records)
    out = ["--out", str(tmp_path / "figure.png")] if "--out" not in arguments else []
    done = subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "plot", str(results), *arguments, *out], capture_output=True, text=True
    )
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "figure.png").exists()
