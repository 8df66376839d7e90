"""Running one lmms-eval task of a suite through a ``GC2BenchLMM``.

A suite entry names an lmms-eval task and, for offline runs, a local ``fixture`` in that
task's schema; the task's own prompt, filters and metric are used either way. ``metric``
and ``scale`` choose the headline score that tables show (in the papers' units).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

from gc2bench.evaluation.fixtures import build_fixture, fixture_digest, fixture_split


@dataclass
class TaskResult:
    metrics: dict
    samples: list[dict]
    failures: list[dict]
    wall_s: float


def use_offline_hub() -> None:
    """Fixture-only suites never touch the hub: make that explicit before datasets is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def task_spec(entry: dict) -> str | dict:
    """The task name, or a dict override that points a built-in task at local data.

    ``fixture``: one of gc2bench's generated fixtures; ``data_files`` + ``split``: a local
    parquet file in the task's schema (e.g. a downloaded copy of its hub dataset).
    """
    if entry.get("fixture"):
        files = {fixture_split(entry["fixture"]): str(build_fixture(entry["fixture"]))}
    elif entry.get("data_files"):
        if not entry.get("split"):
            raise ValueError(f"suite task {entry['task']}: data_files needs `split` (the split the task reads)")
        files = {entry["split"]: str(entry["data_files"])}
    else:
        return entry["task"]
    return {"task": entry["task"], "dataset_path": "parquet", "dataset_kwargs": {"data_files": files}}


def data_description(entry: dict) -> dict:
    if entry.get("fixture"):
        return {"source": "fixture", "fixture": entry["fixture"], "digest": fixture_digest(entry["fixture"])}
    if entry.get("data_files"):
        return {"source": "local parquet", "data_files": str(entry["data_files"]), "split": entry.get("split")}
    return {"source": "lmms-eval task dataset"}


@lru_cache(maxsize=1)
def task_manager():
    """lmms-eval's task index (building it scans every task YAML: seconds), once per process."""
    from lmms_eval.tasks import TaskManager

    return TaskManager()


def evaluate_task(lm, entry: dict, limit: int | None = None, seed: int = 0) -> TaskResult:
    """Evaluate ``lm`` on one suite entry; metrics keyed as lmms-eval names them (without filter)."""
    import time

    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import get_task_dict

    name = entry["task"]
    task = get_task_dict([task_spec(entry)], task_manager())[name]
    lm.sample_stats.clear()
    lm.failures.clear()
    start = time.perf_counter()
    # Scoring reads documents without decoding their images (lmms-eval's CLI default), so an
    # unreadable image fails its own sample only.
    output = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager(), limit=limit, log_samples=True,
                             random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                             fewshot_random_seed=seed, bootstrap_iters=0,
                             cli_args=SimpleNamespace(process_with_media=False))
    wall_s = time.perf_counter() - start
    raw = output["results"][name]
    metrics = {key.split(",")[0]: value for key, value in raw.items()
               if isinstance(value, (int, float)) and not key.startswith(("alias", "sample"))
               and "_stderr" not in key}
    failed = {failure["doc_id"] for failure in lm.failures}
    logged = output.get("samples", {}).get(name, [])
    if failed:
        # Failed samples are skipped, not scored: re-aggregate the task's own metrics without them.
        kept = [sample for sample in logged if sample["doc_id"] not in failed]
        for metric, aggregate in task.aggregation().items():
            if metric in metrics:
                values = [sample[metric] for sample in kept if metric in sample]
                metrics[metric] = aggregate(values) if values else None
    samples = []
    for sample in logged:
        doc_id = sample["doc_id"]
        if doc_id in failed:
            continue
        row = {"doc_id": doc_id, "answer": _first(sample.get("filtered_resps")), "target": sample.get("target")}
        row.update(lm.sample_stats.get((name, doc_id), {}))
        samples.append(row)
    headline = metrics.get(entry["metric"])
    metrics["metric"] = entry["metric"]
    metrics["score"] = None if headline is None else headline * float(entry.get("scale", 1))
    return TaskResult(metrics, samples, list(lm.failures), wall_s)


def summarize(samples: list[dict], failures: list[dict], wall_s: float) -> tuple[dict, dict]:
    """Token accounting and efficiency figures of a task from its per-sample rows."""
    def stat(key):
        values = [s[key] for s in samples if s.get(key) is not None]
        if not values:
            return None
        values.sort()
        return {"mean": statistics.fmean(values), "median": statistics.median(values),
                "p90": values[min(len(values) - 1, int(0.9 * len(values)))]}

    tokens = {key: stat(key) for key in ("visual_tokens_before", "visual_tokens_kept", "newline_tokens_before",
                                         "newline_tokens_kept", "layer_averaged_image_tokens")}
    efficiency = {key: stat(key) for key in ("vision_ms", "compression_ms", "prefill_ms", "decode_ms")}
    efficiency.update({"wall_s": wall_s, "samples": len(samples), "failed_samples": len(failures),
                       "samples_per_s": len(samples) / wall_s if wall_s > 0 else None})
    return tokens, efficiency


def _first(value):
    while isinstance(value, list) and value:
        value = value[0]
    return value
