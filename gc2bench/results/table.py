"""The papers' table layout from run records.

One table per model; one row per method × ratio; one column per benchmark (the record's
headline ``score``); ``Average`` = mean over benchmarks of score ÷ the uncompressed run's
score, in %. A missing cell or baseline is shown as missing (–), never as 0, and a row's
Average is shown only when every benchmark of the table has both.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from gc2bench.results.records import iter_records

MISSING = "–"
BASELINE = "none"


def collect(records: list[dict]) -> dict[str, dict]:
    """Per model: ``tasks`` in first-seen order and ``cells[(method, ratio)][task] = score``."""
    tables: dict[str, dict] = {}
    for record in records:
        if record.get("status") != "done":
            continue
        score = record.get("metrics", {}).get("score")
        if score is None:
            continue
        table = tables.setdefault(record["model"]["name"], {"tasks": [], "cells": {}})
        task = record["task"]
        if task not in table["tasks"]:
            table["tasks"].append(task)
        row = (record["compressor"]["name"], float(record["ratio"]))
        table["cells"].setdefault(row, {})[task] = float(score)
    return tables


def rows_with_average(table: dict) -> list[tuple[str, float, list[float | None], float | None]]:
    """Rows sorted as in the papers: the baseline first, then ratio descending, then method."""
    tasks = table["tasks"]
    baseline = next((cells for (method, _), cells in table["cells"].items() if method == BASELINE), {})
    rows = []
    for (method, ratio), cells in table["cells"].items():
        scores = [cells.get(task) for task in tasks]
        relative = []
        for task, score in zip(tasks, scores):
            base = baseline.get(task)
            relative.append(None if score is None or not base else 100.0 * score / base)
        average = None if not relative or any(r is None for r in relative) else sum(relative) / len(relative)
        rows.append((method, ratio, scores, average))
    rows.sort(key=lambda r: (r[0] != BASELINE, -r[1], r[0]))
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render(tables: dict[str, dict], fmt: str = "md") -> str:
    out = io.StringIO()
    for model, table in tables.items():
        header = ["Method", "R", *table["tasks"], "Average (%)"]
        body = [[method, f"{ratio:g}", *[_fmt(s) for s in scores], _fmt(average)]
                for method, ratio, scores, average in rows_with_average(table)]
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["model", *header])
            writer.writerows([[model, *row] for row in body])
        elif fmt == "latex":
            out.write(f"% {model}\n\\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}\n\\toprule\n")
            out.write(" & ".join(_latex(h) for h in header) + " \\\\\n\\midrule\n")
            for row in body:
                out.write(" & ".join(_latex(cell) for cell in row) + " \\\\\n")
            out.write("\\bottomrule\n\\end{tabular}\n")
        else:
            out.write(f"### {model}\n\n| " + " | ".join(header) + " |\n")
            out.write("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|\n")
            for row in body:
                out.write("| " + " | ".join(row) + " |\n")
            out.write("\n")
    return out.getvalue()


def _latex(text: str) -> str:
    if text == MISSING:
        return "--"
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def print_table(results_dir: str, fmt: str = "md") -> int:
    if not Path(results_dir).is_dir():
        print(f"gc2bench table: {results_dir}: no such directory", file=sys.stderr)
        return 2
    tables = collect([record for _, record in iter_records(results_dir)])
    if not tables:
        print(f"gc2bench table: no finished run records under {results_dir}", file=sys.stderr)
        return 1
    sys.stdout.write(render(tables, fmt))
    return 0
