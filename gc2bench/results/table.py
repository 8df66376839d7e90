"""The papers' table layout from run records.

One table per model; one row per method × ratio (and per parameter variant where a method
ran with several values of a parameter at one ratio, e.g. a τ sweep); one column per
benchmark (the record's headline ``score``), in the papers' order where known; ``Average`` =
mean over benchmarks of score ÷ the uncompressed run's score, in %. A missing cell or
baseline is shown as missing (–), never as 0, and a row's Average is shown only when every
benchmark of the table has both. Records whose status is not ``done`` are ignored.

Options: the published numbers of one paper table next to ours (:func:`read_paper`) and 95%
confidence intervals from a paired bootstrap against the uncompressed run
(:func:`confidence_intervals`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gc2bench.config import config_names
from gc2bench.errors import ConfigError, Gc2benchError
from gc2bench.results.benchmarks import PAPER_BENCHMARKS, benchmark_of, display_name
from gc2bench.results.comparable import comparable_groups, paper_warnings
from gc2bench.results.published import PAPER_METHOD, ocr_note, protocol_differences
from gc2bench.results.records import usable_records

MISSING = "–"
BASELINE = "none"
# Rows in the papers' method order; the other conf/compressor configs follow by name (method_order).
PAPER_METHOD_ORDER = ("none", "fastv", "pdrop", "sparsevlm", "prumerge", "fastervlm", "fastervlm_gc2", "random",
                      "fastv_globalcom2", "sparsevlm_globalcom2", "globalcom2")
NOT_VARIANT_PARAMS = {"name", "ratio", "convention", "variant"}
# A compressor's own variant name (views: thumbnail_only | crops_only; drop_crop: most | least): always in
# its row's key and label, e.g. "drop_crop (most)", even when the table has one variant only.
VARIANT = "variant"
CI_ITERATIONS = 2000
CI_SEED = 0
CI_LEVEL = 95


class NoRecords(Gc2benchError):
    """Nothing to show: no finished run records under the results directory."""

    exit_status = 1


def frozen(value) -> str:
    """A comparable, hashable form of a parameter value (lists and dicts included)."""
    return json.dumps(value, sort_keys=True, default=str)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Row:
    """One method at one ratio (and one parameter variant): its records by task."""

    method: str
    ratio: float
    variant: tuple = ()
    records: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.variant:
            return self.method
        parts = [_short(value) if key == VARIANT else f"{key}={_short(value)}" for key, value in self.variant]
        return f"{self.method} ({', '.join(parts)})"

    @property
    def params(self) -> dict:
        record = next(iter(self.records.values()), None)
        return (record or {}).get("compressor", {}).get("params") or {}

    def score(self, task: str) -> float | None:
        record = self.records.get(task)
        return None if record is None else float(record["metrics"]["score"])


@dataclass
class Table:
    model: str
    tasks: list
    rows: list
    notes: list = field(default_factory=list)

    @property
    def baseline(self) -> Row | None:
        return next((row for row in self.rows if row.method == BASELINE), None)

    def relative(self, row: Row, task: str) -> float | None:
        """``row``'s score on ``task`` as % of the uncompressed run's, or None when either is missing."""
        base = self.baseline.score(task) if self.baseline else None
        score = row.score(task)
        return None if score is None or not base else 100.0 * (score / base)

    def average(self, row: Row, tasks: list | None = None) -> float | None:
        """Mean of :meth:`relative` over ``tasks`` (default: all the table's); None if any is missing."""
        relative = [self.relative(row, task) for task in (self.tasks if tasks is None else tasks)]
        return None if not relative or None in relative else sum(relative) / len(relative)

    def shared_tasks(self, rows: list) -> list:
        """The tasks on which the baseline and every row of ``rows`` have a score."""
        base = self.baseline
        return [task for task in self.tasks
                if base and base.score(task) and all(row.score(task) is not None for row in rows)]


def _varying_params(records: list) -> dict:
    """Per method, the parameters that take more than one value at some ratio (in first-seen order)."""
    values: dict = {}
    for record in records:
        compressor = record["compressor"]
        for key, value in (compressor.get("params") or {}).items():
            if key not in NOT_VARIANT_PARAMS:
                values.setdefault(compressor["name"], {}).setdefault(key, {}).setdefault(
                    float(record["ratio"]), set()).add(frozen(value))
    return {method: [key for key, by_ratio in keys.items() if any(len(v) > 1 for v in by_ratio.values())]
            for method, keys in values.items()}


def _sort_value(value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), "") if number else (1, 0.0, str(value))


def method_order(compressors: list) -> tuple:
    """The table's method order: PAPER_METHOD_ORDER, then the other ``compressors`` (conf/compressor
    names) by name; a method in neither comes last."""
    return PAPER_METHOD_ORDER + tuple(sorted(set(compressors) - set(PAPER_METHOD_ORDER)))


def _row_order(row: Row, order: tuple):
    rank = order.index(row.method) if row.method in order else len(order)
    return (row.method != BASELINE, -row.ratio, rank, row.method, [_sort_value(v) for _, v in row.variant])


def _task_order(tasks: list) -> list:
    order = list(PAPER_BENCHMARKS)
    return sorted(tasks, key=lambda task: (order.index(benchmark_of(task)) if benchmark_of(task) else len(order),
                                           tasks.index(task)))


def _finished_order(record: dict) -> tuple:
    """When a record was finished, then its identity key: an order that does not depend on paths."""
    return (str((record.get("timing") or {}).get("finished")), str((record.get("identity") or {}).get("key")),
            frozen(record.get("metrics")))


def collect(records: list) -> dict:
    """Finished records → one :class:`Table` per model name and comparable identity (``comparable_groups``)."""
    finished = [record for record in records
                if record.get("status") == "done" and (record.get("metrics") or {}).get("score") is not None]
    by_model = comparable_groups(finished)
    order = method_order(config_names("compressor"))
    tables = {}
    for model, model_records in by_model.items():
        varying = _varying_params(model_records)
        rows: dict = {}
        tasks: list = []
        notes: list = []
        for record in model_records:
            method, ratio = record["compressor"]["name"], float(record["ratio"])
            params = record["compressor"].get("params") or {}
            variant = tuple((key, params.get(key)) for key in varying.get(method, []))
            if VARIANT in params:
                variant = ((VARIANT, params[VARIANT]),) + variant
            key = (method, ratio, frozen(variant))
            row = rows.setdefault(key, Row(method, ratio, variant))
            if record["task"] in row.records:
                kept = max(row.records[record["task"]], record, key=_finished_order)
                notes.append(f"{model}: several finished records for {row.label} R={ratio:g} {record['task']} "
                             f"made alike; the latest finished ({_finished_order(kept)[0]}) is used")
                row.records[record["task"]] = kept
                continue
            row.records[record["task"]] = record
            if record["task"] not in tasks:
                tasks.append(record["task"])
        ordered = sorted(rows.values(), key=lambda row: _row_order(row, order))
        tables[model] = Table(model, _task_order(tasks), ordered, notes)
    return tables


# -- published numbers ------------------------------------------------------------------------------

@dataclass
class PaperTable:
    """A published table in ../shared/paper_tables format: ``ratio``, a key column, benchmark columns,
    ``average_pct``. The key column is ``method`` or, for GlobalCom² ablations, one of its parameters
    (e.g. ``allocation``); ``none`` there is the uncompressed run."""

    path: str
    key_column: str
    benchmarks: list
    rows: dict

    def row_for(self, row: Row) -> dict | None:
        if self.key_column == "method":
            name = PAPER_METHOD.get(row.method, row.method)
        elif row.method == BASELINE:
            name = BASELINE
        elif self.key_column in row.params:
            name = str(row.params[self.key_column])
        else:
            return None
        return self.rows.get((name, round(row.ratio, 4)))

    def shared_tasks(self, table: Table) -> list:
        """This table's tasks that are benchmarks of the paper table."""
        return [task for task in table.tasks if benchmark_of(task) in self.benchmarks]

    def average(self, table: Table, paper_row: dict) -> tuple[float | None, bool]:
        """The paper's Average over the benchmarks both tables have: as published when they are all the
        paper's, else recomputed from its numbers; (value, recomputed)."""
        mapped = [benchmark_of(task) for task in self.shared_tasks(table)]
        if not mapped:
            return None, False
        if sorted(mapped) == sorted(self.benchmarks):
            return paper_row.get("average_pct"), False
        base = self.rows.get((BASELINE, 1.0))
        if base is None:
            return None, True
        ratios = [None if paper_row.get(b) is None or not base.get(b) else 100.0 * paper_row[b] / base[b]
                  for b in mapped]
        return (None if None in ratios else sum(ratios) / len(ratios)), True


def _number(text: str, where: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def read_paper(path: str | Path) -> PaperTable:
    """Read a published table; one-line ``ConfigError`` for a missing file or unexpected columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--paper {path}: no such file")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = [c.strip() for c in reader.fieldnames or []]
        lines = list(reader)
    benchmarks = [c for c in columns if c in PAPER_BENCHMARKS]
    if "ratio" not in columns or not benchmarks:
        raise ConfigError(f"--paper {path}: expected columns ratio, method and some of "
                         f"{', '.join(PAPER_BENCHMARKS)} (found: {', '.join(columns) or 'none'})")
    keys = [c for c in columns if c not in PAPER_BENCHMARKS and c not in ("ratio", "average_pct")]
    if "method" in columns:
        key_column = "method"
    elif len(keys) == 1:
        key_column = keys[0]
    else:
        raise ConfigError(f"--paper {path}: no 'method' column (found: {', '.join(columns)})")
    rows = {}
    for number, line in enumerate(lines, start=2):
        line = {(k or "").strip(): v for k, v in line.items()}
        ratio = _number(line.get("ratio"), f"--paper {path}: line {number}, column ratio")
        name = (line.get(key_column) or "").strip()
        if ratio is None or not name:
            raise ConfigError(f"--paper {path}: line {number} lacks ratio or {key_column}")
        rows[(name, round(ratio, 4))] = {
            column: _number(line.get(column), f"--paper {path}: line {number}, column {column}")
            for column in [*benchmarks, "average_pct"] if column in columns}
    return PaperTable(str(path), key_column, benchmarks, rows)


# -- confidence intervals -----------------------------------------------------------------------------

POPE_RATES = ("pope_precision", "pope_recall", "pope_f1_score")
# Per-sample dicts whose aggregate is the mean of their "score" times this factor (lmms-eval's own).
MEAN_OF_SCORE_FACTOR = {"pope_accuracy": 1.0, "gpt_eval_score": 100.0}
MEAN_OVER = " (mean over "
MMBENCH_VARIANT = 1_000_000


@dataclass
class SampleSet:
    """One run's per-sample evidence for its headline metric, as resampling units.

    units: unit key → (stratum, feature tuple); a resample draws units with replacement within each
    stratum. value: ``mean`` (a stratum's score is the mean of one feature) or ``pope`` (precision /
    recall / F1 from tp, fp, fn counts). combine: ``pooled`` (all units as one set), ``mean`` (mean
    over strata: lmms-eval scores averaged over a document field) or ``sum`` (MME: sum over categories).
    """

    value: str
    combine: str
    metric: str
    scale: float
    units: dict

    def features(self, keys: list) -> np.ndarray:
        return np.array([self.units[key][1] for key in keys], dtype=float)

    def _per_stratum(self, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if self.value == "mean":
            return sums[..., 0] / sizes
        tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
        if self.metric == "pope_precision":
            return precision
        if self.metric == "pope_recall":
            return recall
        return np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                         where=precision + recall > 0)

    def statistic(self, sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """The headline score from feature sums ``[..., stratum, feature]`` over ``sizes`` units per stratum."""
        if self.combine == "pooled":
            return self.scale * self._per_stratum(sums.sum(-2), sizes.sum())
        per_stratum = self._per_stratum(sums, sizes)
        return self.scale * (per_stratum.sum(-1) if self.combine == "sum" else per_stratum.mean(-1))

    def point(self) -> float:
        """The score on every unit of the run (checked against the record's own score)."""
        keys = list(self.units)
        strata, index = np.unique([str(self.units[k][0]) for k in keys], return_inverse=True)
        features = self.features(keys)
        sums = np.stack([features[index == s].sum(0) for s in range(len(strata))])
        sizes = np.bincount(index, minlength=len(strata)).astype(float)
        return float(self.statistic(sums, sizes))


def _scale(record: dict) -> float:
    """The factor from lmms-eval's aggregate to the headline score (the suite entry's ``scale``)."""
    if record["metrics"].get("scale") is not None:
        return float(record["metrics"]["scale"])
    entry = record.get("entry") if isinstance(record.get("entry"), dict) else None
    if entry is None:  # older records: the suite in the stored config (tasks a list, now keyed by task name)
        tasks = ((record.get("config") or {}).get("suite") or {}).get("tasks") or []
        if isinstance(tasks, dict):
            entry = tasks.get(record["task"]) or {}
        else:
            entry = next((e for e in tasks if isinstance(e, dict) and e.get("task") == record["task"]), {})
    return float(entry.get("scale", 1))


def _mmbench_hits(values: list) -> dict:
    """Per MMBench question (index mod 10^6): 1 if every circular variant is right under lmms-eval's
    static option matching, as ``MMBench_Evaluator.eval_result(..., "static")`` counts it."""
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    data = pd.DataFrame(values).sort_values(by="index")
    data["prediction"] = [str(x) for x in data["prediction"]]
    data = data.rename(columns={k: k.lower() for k in data.columns if k not in "ABCD"})
    evaluator = MMBench_Evaluator(sys_prompt="There are several options:")
    answers = dict(zip(data["index"], data["answer"]))
    return {int(index): evaluator.eval_sub_data(data[data["index"] % MMBENCH_VARIANT == index], answers,
                                                static_only=True)
            for index in data["index"] if index < MMBENCH_VARIANT}


def sample_set(record: dict) -> tuple[SampleSet | None, str]:
    """The per-sample evidence of ``record`` (``samples[].metric_value``, and ``group`` for a headline
    averaged over a document field), or (None, why not)."""
    metric = str(record["metrics"].get("metric"))
    base_metric, grouped = metric.split(MEAN_OVER)[0], MEAN_OVER in metric
    samples = record.get("samples") or []
    # A document without a value has no part in the headline (e.g. an MME cognition question when
    # the headline is perception); the point check below catches values that should be there.
    values = [(s.get("doc_id"), s.get("metric_value"), s.get("group")) for s in samples
              if s.get("metric_value") is not None]
    if not values or any(doc_id is None for doc_id, _, _ in values):
        return None, "no per-sample metric values (samples[].metric_value)"
    if grouped and any(group is None for _, _, group in values):
        return None, f"{metric}: samples lack the `group` they are averaged over"
    scale = _scale(record)
    combine = "mean" if grouped else "pooled"
    stratum = {doc_id: (group if grouped else 0) for doc_id, _, group in values}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v, _ in values):
        result = SampleSet("mean", combine, base_metric, scale,
                           {doc_id: (stratum[doc_id], (float(v),)) for doc_id, v, _ in values})
    elif not all(isinstance(v, dict) for _, v, _ in values):
        return None, f"metric_value mixes numbers and other values for {metric}"
    elif base_metric in POPE_RATES:
        units = {}
        for doc_id, v, _ in values:
            predicted, truth = str(v.get("prediction")), str(v.get("ground_truth"))
            units[doc_id] = (stratum[doc_id], (float(truth == "yes" and predicted == "yes"),
                                               float(truth == "no" and predicted == "yes"),
                                               float(truth == "yes" and predicted == "no")))
        result = SampleSet("pope", combine, base_metric, scale, units)
    elif base_metric.startswith("mme_") and not grouped:
        pairs: dict = {}
        for _, v, _ in values:
            pairs.setdefault((str(v["category"]), str(v["question_id"])), []).append(float(v["score"]))
        units = {key: (key[0], (100.0 * sum(s) / len(s) + 100.0 * all(x == 1 for x in s),))
                 for key, s in pairs.items()}
        result = SampleSet("mean", "sum", base_metric, scale, units)
    elif any("hit" in v for _, v, _ in values):
        result = SampleSet("mean", combine, base_metric, scale, {
            doc_id: (stratum[doc_id], (100.0 * float(v["hit"]),)) for doc_id, v, _ in values if "hit" in v})
    elif not grouped and all({"index", "prediction", "answer"} <= set(v) for _, v, _ in values):
        try:
            hits = _mmbench_hits([v for _, v, _ in values])
        except (ImportError, KeyError, ValueError) as error:
            return None, f"MMBench hits could not be recomputed ({type(error).__name__}: {error})"
        result = SampleSet("mean", "pooled", base_metric, scale,
                           {index: (0, (100.0 * hit,)) for index, hit in hits.items()})
    elif base_metric in MEAN_OF_SCORE_FACTOR and all("score" in v for _, v, _ in values):
        factor = MEAN_OF_SCORE_FACTOR[base_metric]
        result = SampleSet("mean", combine, base_metric, scale,
                           {doc_id: (stratum[doc_id], (factor * float(v["score"]),)) for doc_id, v, _ in values})
    else:
        return None, f"no resampling rule for per-sample dicts of {metric}"
    point, score = result.point(), float(record["metrics"]["score"])
    if not math.isclose(point, score, rel_tol=1e-6, abs_tol=1e-6):
        return None, f"per-sample values give {point:.4f}, the record's score is {score:.4f}"
    return result, ""


def _bootstrap_sums(matrices: list, strata: np.ndarray, iterations: int, rng: np.random.Generator):
    """Feature sums of ``iterations`` resamples (units with replacement, within each stratum), the same
    resamples for every ``[units, features]`` matrix; returns ([iterations, strata, features] per
    matrix, units per stratum)."""
    labels = np.unique(strata)
    stacked = np.concatenate(matrices, axis=1)
    bounds = np.cumsum([0] + [m.shape[1] for m in matrices])
    sums = np.zeros((iterations, len(labels), stacked.shape[1]))
    sizes = np.zeros(len(labels))
    for c, label in enumerate(labels):
        members = np.flatnonzero(strata == label)
        n = len(members)
        sizes[c] = n
        rows = stacked[members]
        chunk = max(1, 4_000_000 // n)
        for start in range(0, iterations, chunk):
            b = min(chunk, iterations - start)
            draws = rng.integers(0, n, size=(b, n), dtype=np.int64)
            draws += n * np.arange(b)[:, None]
            counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
            sums[start:start + b, c] = counts @ rows
    return [sums[..., bounds[i]:bounds[i + 1]] for i in range(len(matrices))], sizes


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (100 - CI_LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class TableCI:
    """Per (row index, task): the score's CI and the difference-vs-baseline CI; per row: the Average's CI."""

    score: dict = field(default_factory=dict)
    delta: dict = field(default_factory=dict)
    average: dict = field(default_factory=dict)
    iterations: int = CI_ITERATIONS
    seed: int = CI_SEED


def confidence_intervals(table: Table, iterations: int = CI_ITERATIONS, seed: int = CI_SEED) -> TableCI:
    """Paired bootstrap against the uncompressed run, per task.

    Units are the documents both runs scored (MME: image pairs, resampled within each category);
    each resample is applied to both runs, so the difference's CI reflects only where they disagree.
    A task's resamples depend on ``seed`` and the task name only, so rows with the same documents
    share them. Average's CI: per resample, the mean over tasks of 100 × score ÷ baseline score
    (tasks resampled independently). Percentile intervals; notes go to ``table.notes``.
    """
    result = TableCI(iterations=iterations, seed=seed)
    base = table.baseline
    relative: dict = {}
    for task in table.tasks:
        base_record = base.records.get(task) if base else None
        if base_record is None:
            table.notes.append(f"{table.model}: no CI for {task}: no uncompressed run")
            continue
        base_set, why = sample_set(base_record)
        if base_set is None:
            table.notes.append(f"{table.model}: no CI for {task}: uncompressed run: {why}")
            continue
        groups: dict = {}
        for index, row in enumerate(table.rows):
            record = row.records.get(task)
            if record is None:
                continue
            samples, why = (base_set, "") if row is base else sample_set(record)
            if samples is None:
                table.notes.append(f"{table.model}: no CI for {row.label} R={row.ratio:g} {task}: {why}")
                continue
            if (samples.value, samples.combine, samples.metric) != (base_set.value, base_set.combine,
                                                                     base_set.metric):
                table.notes.append(f"{table.model}: no CI for {row.label} R={row.ratio:g} {task}: metric "
                                   f"{samples.metric} differs from the uncompressed run's {base_set.metric}")
                continue
            common = tuple(sorted(set(samples.units) & set(base_set.units), key=repr))
            groups.setdefault(common, []).append((index, samples))
        for common, members in groups.items():
            if not common:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
            strata = np.unique([str(base_set.units[k][0]) for k in common], return_inverse=True)[1]
            matrices = [base_set.features(common)] + [s.features(common) for _, s in members]
            sums, sizes = _bootstrap_sums(matrices, strata, iterations, rng)
            base_stat = base_set.statistic(sums[0], sizes)
            for (index, samples), run_sums in zip(members, sums[1:]):
                stat = samples.statistic(run_sums, sizes)
                result.score[(index, task)] = _interval(stat)
                if table.rows[index] is not base:
                    result.delta[(index, task)] = _interval(stat - base_stat)
                with np.errstate(divide="ignore", invalid="ignore"):
                    relative[(index, task)] = np.where(base_stat != 0, 100.0 * (stat / base_stat), np.nan)
    for index in range(len(table.rows)):
        per_task = [relative.get((index, task)) for task in table.tasks]
        if table.tasks and all(r is not None for r in per_task):
            result.average[index] = _interval(np.mean(np.stack(per_task), axis=0))
    return result


# -- rendering ----------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return MISSING
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _bracket(interval: tuple | None) -> str:
    return MISSING if interval is None else f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _lines(table: Table, paper: PaperTable | None, ci: TableCI | None) -> list:
    """Per row, the lines to print: (row, label, [text cell per task], Average cell, {csv label: numbers})."""
    out = []
    base = table.baseline
    for index, row in enumerate(table.rows):
        scores = [row.score(task) for task in table.tasks]
        average = table.average(row)
        lines = [(row, "ours", [_fmt(s) for s in scores], _fmt(average), {"ours": (scores, average)})]
        if ci is not None:
            score_ci = [ci.score.get((index, task)) for task in table.tasks]
            average_ci = ci.average.get(index)
            lines.append((row, f"{CI_LEVEL}% CI", [_bracket(c) for c in score_ci], _bracket(average_ci), {
                "ci_low": ([c and c[0] for c in score_ci], average_ci and average_ci[0]),
                "ci_high": ([c and c[1] for c in score_ci], average_ci and average_ci[1])}))
            if row is not base:
                deltas = [None if s is None or base is None or base.score(t) is None else s - base.score(t)
                          for s, t in zip(scores, table.tasks)]
                delta_ci = [ci.delta.get((index, task)) for task in table.tasks]
                cells = [_signed(d) if c is None else f"{_signed(d)} {_bracket(c)}" for d, c in zip(deltas, delta_ci)]
                lines.append((row, f"Δ {BASELINE} ({CI_LEVEL}% CI)", cells, "", {
                    "delta_none": (deltas, None),
                    "delta_none_ci_low": ([c and c[0] for c in delta_ci], None),
                    "delta_none_ci_high": ([c and c[1] for c in delta_ci], None)}))
        if paper is not None:
            paper_row = paper.row_for(row) or {}
            published = [paper_row.get(benchmark_of(task)) if benchmark_of(task) else None for task in table.tasks]
            shared = paper.shared_tasks(table)
            paper_average, recomputed = paper.average(table, paper_row) if paper_row else (None, False)
            ours_average = table.average(row, shared) if shared else None
            diffs = [None if s is None or p is None else s - p for s, p in zip(scores, published)]
            average_diff = None if ours_average is None or paper_average is None else ours_average - paper_average
            mark = "*" if recomputed or shared != table.tasks else ""
            differs = PROTOCOL_MARK if protocol_differences(paper.path, row.method, row.records) else ""
            lines.append((row, "paper" + differs, [_fmt(p) for p in published],
                          _fmt(paper_average) + (mark if paper_average is not None else ""),
                          {"paper": (published, paper_average)}))
            lines.append((row, "Δ paper", [_signed(d) for d in diffs],
                          _signed(average_diff) + (mark if average_diff is not None else ""),
                          {"delta_paper": (diffs, average_diff)}))
        out.append(lines)
    return out


def _legend(table: Table, paper: PaperTable | None, ci: TableCI | None) -> list:
    notes = []
    if paper is not None:
        notes.append(f"paper: {paper.path}; Δ paper = ours − paper.")
        shared = paper.shared_tasks(table)
        recomputed = sorted(benchmark_of(t) for t in shared) != sorted(paper.benchmarks)
        if shared and (recomputed or shared != table.tasks):
            notes.append(f"* Average over the {len(shared)} benchmarks both tables have "
                         f"({', '.join(display_name(t) for t in shared)})"
                         + ("; the paper's recomputed from its numbers" if recomputed else "")
                         + "; Δ paper compares ours over the same benchmarks.")
    if paper is not None:
        notes.extend(protocol_notes(table, paper))
    ocr = ocr_note(table.rows)
    if ocr and (paper is not None or ("on for" in ocr and "off for" in ocr)):
        notes.append(ocr)
    if ci is not None:
        notes.append(f"{CI_LEVEL}% CI: paired bootstrap over documents against the uncompressed run "
                     f"({ci.iterations} resamples, seed {ci.seed}); Δ {BASELINE} = score − uncompressed score.")
    return notes


PROTOCOL_MARK = " †"


def protocol_notes(table: Table, paper: PaperTable) -> list:
    """One note per row whose records depart from the protocol of the published row they are compared with."""
    notes = []
    for row in table.rows:
        if paper.row_for(row) is None:
            continue
        differences = protocol_differences(paper.path, row.method, row.records)
        if differences:
            notes.append(f"†{row.label} R={row.ratio:g}: not the published protocol: {'; '.join(differences)}.")
    return notes


def _csv_frame(model: str, table: Table, groups: list, extra: bool, tokens: bool) -> pd.DataFrame:
    """One line per row and value kind (``ours``, ``paper``, ``ci_low``, ...), numbers as written to CSV."""
    header = ["model", "Method", "R", *(["Value"] if extra else []), *table.tasks, "Average (%)",
              *(TOKEN_COLUMNS if tokens else [])]
    body = []
    for lines in groups:
        for position, (row, _, _, _, numeric) in enumerate(lines):
            token_cells = _token_cells(row, position, csv_numbers=True) if tokens else []
            for name, (values, average) in numeric.items():
                body.append([model, row.label, f"{row.ratio:g}", *([name] if extra else []),
                             *[_csv(v, name) for v in values], _csv(average, name),
                             *(token_cells if name == "ours" else [""] * len(token_cells))])
    return pd.DataFrame(body, columns=header)


def _text_frame(table: Table, groups: list, extra: bool, tokens: bool) -> tuple[pd.DataFrame, list]:
    """The md / LaTeX table: a row's first line carries its label and R; returns (frame, index of each
    row's first line)."""
    header = ["Method", "R", *([""] if extra else []), *[display_name(t) for t in table.tasks], "Average (%)",
              *(TOKEN_COLUMNS if tokens else [])]
    body, starts = [], []
    for lines in groups:
        starts.append(len(body))
        for position, (row, label, cells, average, _) in enumerate(lines):
            lead = [row.label, f"{row.ratio:g}"] if position == 0 else ["", ""]
            token_cells = _token_cells(row, position) if tokens else []
            body.append([*lead, *([label] if extra else []), *cells, average, *token_cells])
    return pd.DataFrame(body, columns=header), starts


def _markdown(frame: pd.DataFrame, fixed: int) -> str:
    cells = frame.map(lambda cell: cell.replace("|", "\\|"))
    align = ["left"] * fixed + ["right"] * (len(frame.columns) - fixed)
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align)


def _latex_tabular(frame: pd.DataFrame, fixed: int, rules_before: list) -> str:
    cells = frame.map(_latex)
    cells.columns = [_latex(column) for column in frame.columns]
    for line in rules_before:  # the Styler draws no rule between body rows: this one opens the line
        cells.iloc[line, 0] = "\\midrule\n" + cells.iloc[line, 0]
    return cells.style.hide(axis="index").to_latex(column_format="l" * fixed + "r" * (len(frame.columns) - fixed),
                                                   hrules=True)


def render(tables: dict, fmt: str = "md", paper: PaperTable | None = None, ci: dict | None = None,
           tokens: bool = False) -> str:
    """``tables`` as md, csv or latex; ``paper`` adds published numbers and differences, ``ci`` (model →
    :class:`TableCI`) adds confidence intervals, ``tokens`` each row's mean equivalent image tokens and share.
    One DataFrame per table, rendered by pandas (md: ``to_markdown``, csv: ``to_csv``, latex: ``Styler.to_latex``)."""
    out = []
    for model, table in tables.items():
        table_ci = (ci or {}).get(model)
        extra = paper is not None or table_ci is not None
        groups = _lines(table, paper, table_ci)
        if fmt == "csv":
            out.append(_csv_frame(model, table, groups, extra, tokens).to_csv(index=False, lineterminator="\n"))
            continue
        frame, starts = _text_frame(table, groups, extra, tokens)
        fixed = 3 if extra else 2
        legend = _legend(table, paper, table_ci) + (token_legend(table) if tokens else [])
        if fmt == "latex":
            out.append(f"% {model}\n" + _latex_tabular(frame, fixed, starts[1:] if extra else [])
                       + "".join(f"% {_latex(note)}\n" for note in legend))
        else:
            out.append(f"### {model}\n\n" + _markdown(frame, fixed) + "\n\n"
                       + "".join(f"{note}  \n" for note in legend) + ("\n" if legend else ""))
    return "".join(out)


# -- equal R, equal tokens: each row's layer-averaged ("equivalent") image tokens --------------------------

TOKEN_COLUMNS = ("Eq. tokens", "Eq. share (%)")


def equivalent_tokens(row: Row) -> tuple[float | None, float | None]:
    """Mean over ``row``'s records of their mean equivalent image tokens and share (newlines counted;
    ``gc2bench.models.adapter.EQUIVALENT_CONVENTION``); None where no record has them."""
    tokens, shares = [], []
    for record in row.records.values():
        accounting = record.get("tokens") or {}
        mean_tokens = (accounting.get("equivalent_image_tokens") or {}).get("mean")
        mean_share = (accounting.get("equivalent_share") or {}).get("mean")
        if mean_tokens is not None:
            tokens.append(mean_tokens)
        if mean_share is not None:
            shares.append(mean_share)
    return (sum(tokens) / len(tokens) if tokens else None,
            100.0 * sum(shares) / len(shares) if shares else None)


def _token_cells(row: Row, position: int, csv_numbers: bool = False) -> list:
    if position:
        return ["", ""]
    tokens, share = equivalent_tokens(row)
    if csv_numbers:
        return ["" if v is None else f"{v:.2f}" for v in (tokens, share)]
    return [_fmt(tokens), _fmt(share)]


def token_legend(table: Table) -> list:
    return ["Eq. tokens: image tokens entering each LLM layer at prefill, averaged over the layers and over the "
            "row's benchmarks (vision-stage methods: the kept count; newlines counted); Eq. share: that / the "
            "uncompressed image block, in %."]


def _csv(value: float | None, name: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.1f}" if name in ("ours", "paper") else f"{value:.2f}"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
LATEX_UNICODE = {MISSING: "--", "Δ": r"$\Delta$", "−": "$-$", "τ": r"$\tau$", "α": r"$\alpha$"}


def _latex(text: str) -> str:
    """``text`` escaped for LaTeX text mode."""
    escaped = "".join(LATEX_SPECIAL.get(char, char) for char in text)
    for char, replacement in LATEX_UNICODE.items():
        escaped = escaped.replace(char, replacement)
    return escaped


def load_tables(results_dir: str | Path, model: str | None = None) -> dict:
    """:func:`collect` over the records under ``results_dir``, optionally one model; ``ConfigError``
    when the directory or the model is missing, :class:`NoRecords` when no record is finished."""
    if not Path(results_dir).is_dir():
        raise ConfigError(f"{results_dir}: no such directory")
    records, skipped = usable_records(results_dir)
    for line in skipped:
        print(f"gc2bench table: skipped {line}", file=sys.stderr)
    tables = collect(records)
    if not tables:
        raise NoRecords(f"no finished run records under {results_dir}")
    if model is not None:
        chosen = {label: table for label, table in tables.items() if label == model or label.startswith(f"{model} · ")}
        if not chosen:
            raise ConfigError(f"no finished records for model {model!r} under {results_dir} "
                             f"(models: {', '.join(sorted(tables))})")
        tables = chosen
    return tables


def print_table(results_dir: str, fmt: str = "md", paper: str | None = None, ci: bool = False,
                model: str | None = None, iterations: int = CI_ITERATIONS, tokens: bool = False) -> int:
    """The ``gc2bench table`` command: print the tables, notes on stderr; exit status. Bad input raises a
    ``Gc2benchError`` (``cli.main`` reports it)."""
    published = read_paper(paper) if paper else None
    tables = load_tables(results_dir, model)
    if iterations < 1:
        raise ConfigError(f"--ci-iterations {iterations}: must be at least 1")
    if published is not None:
        for table in tables.values():
            for warning in paper_warnings(table, published):
                print(f"warning: {warning}", file=sys.stderr)
    intervals = {name: confidence_intervals(table, iterations) for name, table in tables.items()} if ci else None
    sys.stdout.write(render(tables, fmt, published, intervals, tokens=tokens))
    for table in tables.values():
        for note in dict.fromkeys(table.notes):
            print(f"note: {note}", file=sys.stderr)
    return 0
