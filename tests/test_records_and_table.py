import json
import os

import pytest

from gc2bench.results.records import REQUIRED_KEYS, iter_records, read_record, record_path, run_dir, write_record
from gc2bench.results.table import MISSING, collect, render

from conftest import compact_markdown


def rows_with_average(table) -> list:
    """``(label, ratio, [score per task], Average %)`` per row, in table order."""
    return [(row.label, row.ratio, [row.score(task) for task in table.tasks], table.average(row)) for row in table.rows]


def record(method, ratio, task, score, model="m", status="done"):
    return {
        "model": {"name": model},
        "compressor": {"name": method, "params": {"ratio": ratio}},
        "ratio": ratio,
        "task": task,
        "metrics": {"score": score},
        "tokens": {},
        "efficiency": {},
        "versions": {},
        "config": {},
        "status": status,
    }


def test_write_record_is_atomic_and_complete(tmp_path):
    path = record_path(run_dir(tmp_path, "tiny", "globalcom2", {"ratio": 0.1, "tau": 10}), "pope")
    assert path.parent.name.startswith("globalcom2_r0.1_")
    write_record(path, record("globalcom2", 0.1, "pope", 50.0))
    assert read_record(path)["status"] == "done" and read_record(path)["metrics"]["score"] == 50.0
    assert [p.name for p in path.parent.iterdir()] == ["pope.json"]  # no temporary left behind
    with pytest.raises(ValueError, match="lacks keys"):
        write_record(path, {"model": {}})
    assert read_record(path)["metrics"]["score"] == 50.0  # a failed write keeps the old record


def test_a_crash_mid_write_leaves_the_previous_record(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_record(path, record("none", 1.0, "pope", 80.0))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        write_record(path, record("none", 1.0, "pope", 10.0))
    monkeypatch.undo()
    assert read_record(path)["metrics"]["score"] == 80.0
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_run_dir_differs_when_any_parameter_differs(tmp_path):
    a = run_dir(tmp_path, "tiny", "globalcom2", {"ratio": 0.1, "tau": 10})
    b = run_dir(tmp_path, "tiny", "globalcom2", {"ratio": 0.1, "tau": 5})
    assert a != b and a.name.split("_")[:2] == b.name.split("_")[:2]


def test_average_is_mean_of_ratios_to_the_uncompressed_run():
    records = [
        record("none", 1.0, "pope", 80.0),
        record("none", 1.0, "vqav2_val", 50.0),
        record("globalcom2", 0.1, "pope", 60.0),
        record("globalcom2", 0.1, "vqav2_val", 45.0),
    ]
    rows = rows_with_average(collect(records)["m"])
    assert rows[0][:2] == ("none", 1.0) and rows[0][3] == pytest.approx(100.0)
    assert rows[1][:3] == ("globalcom2", 0.1, [45.0, 60.0])  # the papers' order: VQAv2 before POPE
    assert rows[1][3] == pytest.approx((60 / 80 + 45 / 50) / 2 * 100)  # 82.5


def test_missing_baseline_or_cell_is_missing_not_zero():
    records = [
        record("none", 1.0, "pope", 80.0),
        record("globalcom2", 0.1, "pope", 60.0),
        record("globalcom2", 0.1, "vqav2_val", 45.0),
        record("fastv", 0.1, "pope", 70.0),
        record("fastv", 0.1, "vqav2_val", 1.0, status="failed"),
    ]
    rows = {r[0]: r for r in rows_with_average(collect(records)["m"])}
    assert rows["globalcom2"][3] is None  # no baseline for vqav2_val
    assert rows["fastv"][2] == [None, 70.0] and rows["fastv"][3] is None
    text = compact_markdown(render(collect(records), "md"))
    assert "| Method | R | VQAv2 | POPE | Average (%) |" in text
    assert f"| fastv | 0.1 | {MISSING} | 70.0 | {MISSING} |" in text
    assert "| 0.0 |" not in text and "| 0 |" not in text


def test_formats(tmp_path):
    records = [record("none", 1.0, "pope", 80.0), record("globalcom2", 0.25, "pope", 76.0)]
    tables = collect(records)
    csv_text = render(tables, "csv").splitlines()
    assert csv_text[0] == "model,Method,R,pope,Average (%)"
    assert csv_text[2] == "m,globalcom2,0.25,76.0,95.0"
    latex = render(tables, "latex")
    assert "\\begin{tabular}" in latex and "globalcom2 & 0.25 & 76.0 & 95.0 \\\\" in latex


def test_iter_records_ignores_other_json(tmp_path):
    (tmp_path / "other.json").write_text('{"x": 1}')
    write_record(tmp_path / "a" / "pope.json", record("none", 1.0, "pope", 80.0))
    assert [p.name for p, _ in iter_records(tmp_path)] == ["pope.json"]
    assert set(REQUIRED_KEYS) <= set(read_record(tmp_path / "a" / "pope.json"))


def test_rows_split_by_the_parameters_a_sweep_varies():
    records = [
        record("none", 1.0, "pope", 80.0),
        record("globalcom2", 0.25, "pope", 76.0),
        record("globalcom2", 0.25, "pope", 72.0),
        record("globalcom2", 0.1, "pope", 60.0),
        record("pdrop", 0.5, "pope", 70.0),
        record("pdrop", 0.25, "pope", 66.0),
    ]
    for r, tau in zip(records[1:4], (10.0, 1.0, 10.0)):
        r["compressor"]["params"].update(tau=tau, alpha=0.5)
    for r, lam in zip(records[4:], (0.7, 0.4)):
        r["compressor"]["params"]["lam"] = lam  # derived from the ratio: not a variant
    rows = [(label, ratio, scores) for label, ratio, scores, _ in rows_with_average(collect(records)["m"])]
    assert rows == [
        ("none", 1.0, [80.0]),
        ("pdrop", 0.5, [70.0]),
        ("pdrop", 0.25, [66.0]),
        ("globalcom2 (tau=1)", 0.25, [72.0]),
        ("globalcom2 (tau=10)", 0.25, [76.0]),
        ("globalcom2 (tau=10)", 0.1, [60.0]),
    ]


def test_a_duplicate_record_is_noted_not_summed():
    first, second = record("none", 1.0, "pope", 80.0), record("none", 1.0, "pope", 10.0)
    first["timing"], second["timing"] = {"finished": "2026-01-02"}, {"finished": "2026-01-01"}
    for order in ([first, second], [second, first]):  # never decided by the order records were found in
        table = collect(order)["m"]
        assert rows_with_average(table) == [("none", 1.0, [80.0], 100.0)]
        assert table.notes == [
            "m: several finished records for none R=1 pope made alike; the latest finished (2026-01-02) is used"
        ]


def test_rows_follow_the_papers_order_then_every_other_compressor_config(tmp_path, monkeypatch):
    import shutil

    import gc2bench.config
    from gc2bench.config import CONF_DIR, config_names
    from gc2bench.results.table import PAPER_METHOD_ORDER, method_order

    assert set(config_names("compressor")) <= set(method_order(config_names("compressor")))
    methods = ["views", "zz_unknown", "aa_new", "globalcom2", "drop_crop", "fastv", "none"]
    records = [record(method, 1.0 if method == "none" else 0.5, "pope", 50.0) for method in methods]
    assert [row.method for row in collect(records)["m"].rows] == [
        "none",
        "fastv",
        "globalcom2",
        "drop_crop",
        "views",
        "aa_new",
        "zz_unknown",
    ]  # aa_new: no config
    shutil.copytree(CONF_DIR / "compressor", tmp_path / "conf" / "compressor")
    (tmp_path / "conf" / "compressor" / "aa_new.yaml").write_text("name: aa_new\n")
    monkeypatch.setattr(gc2bench.config, "CONF_DIR", tmp_path / "conf")
    assert method_order(config_names("compressor"))[: len(PAPER_METHOD_ORDER)] == PAPER_METHOD_ORDER
    assert [row.method for row in collect(records)["m"].rows] == [
        "none",
        "fastv",
        "globalcom2",
        "aa_new",
        "drop_crop",
        "views",
        "zz_unknown",
    ]  # a new config: by itself
