"""`gc2bench conformance globalcom2 FILE` on the reference vectors (tests/data, a copy of ../shared/vectors), and
`bench selection`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gc2bench.bench.selection import bench_selection
from gc2bench.cli import main
from gc2bench.compressors.conformance import run_conformance

from conftest import DATA

REFERENCE = DATA / "globalcom2_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    assert REFERENCE.is_file(), f"reference vectors missing: {REFERENCE}"
    return json.loads(REFERENCE.read_text())


def test_shared_reference_agrees(capsys, reference):
    assert main(["conformance", "globalcom2", str(REFERENCE)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    total = len(reference["cases"])
    assert total == 16 and lines[-1] == f"{total}/{total} cases agree"
    assert len(lines) == total + 1 and all(line.startswith("ok") for line in lines[:-1])


def _corrupt(reference, tmp_path, edit) -> Path:
    data = copy.deepcopy(reference)
    edit(data)
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit,reason",
    [
        (lambda d: d["cases"][0]["expected"]["thumbnail_kept"].reverse(), "thumbnail"),
        (
            lambda d: d["cases"][1]["expected"]["scales"].__setitem__(0, d["cases"][1]["expected"]["scales"][0] + 2e-6),
            "budgets differ",
        ),
        (lambda d: d["cases"][2]["expected"]["grid"].reverse(), "grid"),
        (lambda d: d["cases"][3]["expected"]["crops_sequence"].pop(5), "crop sequence"),
        (lambda d: d["cases"][4].__setitem__("ratio", 0.3), "thumbnail"),
    ],
)
def test_any_disagreement_fails(capsys, reference, tmp_path, edit, reason):
    path = _corrupt(reference, tmp_path, edit)
    assert run_conformance("globalcom2", str(path)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "15/16 cases agree"
    assert sum(line.startswith("FAIL") for line in out) == 1
    assert reason in next(line for line in out if line.startswith("FAIL"))


def test_newline_entries_are_ignored(capsys, reference, tmp_path):
    path = _corrupt(reference, tmp_path, lambda d: d["cases"][0]["expected"]["crops_sequence"].append(-1))
    assert run_conformance("globalcom2", str(path)) == 0


def test_unreadable_file(capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    for name in ("bad.json", "missing.json"):
        assert main(["conformance", "globalcom2", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.startswith(f"error: conformance: cannot read {tmp_path / name}: ")


def test_bench_selection_prints_median(capsys, reference, tmp_path):
    path = _corrupt(reference, tmp_path, lambda d: d.__setitem__("cases", d["cases"][:2]))
    assert bench_selection(str(path), dim=8, repeats=2, warmup=1) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("median ") and lines[-1].endswith(" ms/image")
    assert float(lines[-1].split()[1]) > 0
