"""Running one lmms-eval task of a suite through a ``GC2BenchLMM``.

A suite entry names an lmms-eval task and, for offline runs, local data in that task's schema;
the task's own prompt, filters and metric are used either way. Entry keys:

- ``task``: the lmms-eval task (``textvqa_val``, ``mmbench_en_dev_lite``, …).
- ``metric``: the headline metric as lmms-eval names it; ``a+b`` is the sum of two (MME
  perception + cognition). ``scale``: factor to the papers' units (default 1).
- ``average_over``: a document field; the headline is then the mean over that field's values of
  the metric's own aggregation (POPE: F1 per category, averaged, as the papers report it).
- ``ocr_tokens`` (TextVQA): put the dataset's OCR tokens in the prompt (lmms-eval's ``ocr``
  prompt option; off by default).
- ``pre_prompt`` / ``post_prompt``: replace the task's default prompt text before / after the
  question (its ``lmms_eval_specific_kwargs``), e.g. MM-Vet's bare question as LLaVA asks it.
- ``judge``: the API judge model. MMBench: a model maps answers no letter can be read from (as
  the MMBench server does); ``null`` scores with lmms-eval's static option matching instead (its
  ``_static`` scorer, no API). MM-Vet is judge-scored only. Without the key, both use
  lmms-eval's default judge (``MODEL_VERSION``, else gpt-4o-2024-11-20), as lmms-eval would.
  The judge's credentials come from lmms-eval's environment variables (``API_TYPE``,
  ``OPENAI_API_KEY`` / ``OPENAI_API_URL``, ``AZURE_API_KEY`` / ``AZURE_ENDPOINT``);
  ``skip_reason`` says, before any model is loaded, when they are missing.
- Local data: ``fixture`` (one of gc2bench's generated fixtures), or ``data_files`` + ``split``
  (e.g. a downloaded copy of the hub dataset); GQA also takes ``images_files`` (its image table).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import statistics
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from gc2bench.errors import ConfigError, Gc2benchError
from gc2bench.evaluation.fixtures import COMPANIONS, FIXTURES, build_fixture, fixture_digest, fixture_split
from gc2bench.evaluation.images import undecoded_features
from gc2bench.evaluation.progress import quiet_lmms_eval_logging, task_progress

ENTRY_KEYS = {
    "task",
    "metric",
    "scale",
    "average_over",
    "ocr_tokens",
    "pre_prompt",
    "post_prompt",
    "judge",
    "fixture",
    "data_files",
    "split",
    "images_files",
}
PROMPT_KEYS = ("ocr_tokens", "pre_prompt", "post_prompt")
# API_TYPE values each judge-scored task's lmms-eval code can use, and the variables each needs.
JUDGE_API_TYPES = {"mmbench": ("openai", "azure"), "mmvet": ("openai", "azure", "async_openai", "async_azure", "local")}
LMMS_EVAL_DEFAULT_JUDGE = "gpt-4o-2024-11-20"
JUDGE_CREDENTIALS = {
    "openai": ("OPENAI_API_KEY",),
    "async_openai": ("OPENAI_API_KEY",),
    "azure": ("AZURE_API_KEY", "AZURE_ENDPOINT"),
    "async_azure": ("AZURE_API_KEY", "AZURE_ENDPOINT"),
    "local": (),
}


@dataclass
class TaskResult:
    metrics: dict
    samples: list[dict]
    failures: list[dict]
    wall_s: float


class TaskSkipped(Gc2benchError):
    """A task that cannot be scored here (e.g. its API judge has no key); ``reason`` says why."""

    def __init__(self, task: str, reason: str):
        super().__init__(f"{task} skipped: {reason}")
        self.task, self.reason = task, reason


class JudgeFailed(Gc2benchError):
    """The API judge returned no score for some documents; lmms-eval would have scored them 0."""


def use_offline_hub() -> None:
    """Fixture-only suites never touch the hub: make that explicit before datasets is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# -- suite entries ---------------------------------------------------------------------------------


def benchmark_family(task: str) -> str | None:
    """Which protocol options apply to ``task``: textvqa, mme, mmbench, mmvet, gqa, pope or None."""
    for family in ("textvqa", "mmbench", "gqa", "pope"):
        if task.startswith(family):
            return family
    return task if task in ("mme", "mmvet") else None


def validate_entry(entry: dict) -> None:
    """Raise ConfigError naming the key and value when a suite entry is malformed (no lmms-eval import)."""
    task = entry.get("task")
    if not task or not entry.get("metric"):
        raise ConfigError(f"every suite task needs `task` and `metric` (got {dict(entry)})")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"suite task {task}: unknown key(s) {unknown}; allowed: {sorted(ENTRY_KEYS)}")
    family = benchmark_family(task)
    if entry.get("ocr_tokens") is not None:
        if family != "textvqa":
            raise ConfigError(f"suite task {task}: ocr_tokens applies to TextVQA tasks only")
        if not isinstance(entry["ocr_tokens"], bool):
            raise ConfigError(f"suite task {task}: ocr_tokens={entry['ocr_tokens']!r} must be true or false")
    for key in ("pre_prompt", "post_prompt"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ConfigError(f"suite task {task}: {key}={entry[key]!r} must be a string")
    if "judge" in entry:
        if family not in JUDGE_API_TYPES:
            raise ConfigError(f"suite task {task}: judge applies to MMBench and MM-Vet tasks only")
        if entry["judge"] is not None and (not isinstance(entry["judge"], str) or not entry["judge"].strip()):
            raise ConfigError(f"suite task {task}: judge={entry['judge']!r} must be a model name or null")
    if family == "mmvet" and "judge" in entry and not entry["judge"]:
        raise ConfigError(
            f"suite task {task}: MM-Vet is scored by an API judge only; set judge to a model "
            f"(the official MM-Vet evaluator uses gpt-4-0613) or leave it out for lmms-eval's default"
        )
    parts = entry["metric"].split("+")
    if not all(parts):
        raise ConfigError(f"suite task {task}: metric={entry['metric']!r} is not a metric or a sum a+b")
    if entry.get("average_over") is not None and len(parts) > 1:
        raise ConfigError(f"suite task {task}: average_over needs a single metric, not {entry['metric']!r}")
    try:
        float(entry.get("scale", 1))
    except (TypeError, ValueError):
        raise ConfigError(f"suite task {task}: scale={entry.get('scale')!r} is not a number") from None
    if entry.get("fixture") and entry.get("data_files"):
        raise ConfigError(f"suite task {task}: give `fixture` or `data_files`, not both")
    if entry.get("images_files") and family != "gqa":
        raise ConfigError(f"suite task {task}: images_files applies to GQA tasks only")


def check_suite(cfg) -> None:
    """What ``config.validate`` leaves to the evaluation layer, before any model loads: every task's local
    data (``check_local_data``) and that the run's protocol (``suite.protocol``) defines every task."""
    from gc2bench.config import suite_tasks
    from gc2bench.prompting import get_protocol

    entries = suite_tasks(cfg.suite)
    for entry in entries:
        check_local_data(entry, cfg.suite.get("name"))
    protocol = get_protocol(cfg.suite.get("protocol"))
    for entry in entries:
        protocol.check_task(entry["task"])


def check_local_data(entry, suite: str) -> None:
    """A suite entry's ``fixture`` is one gc2bench has and its ``data_files`` / ``images_files`` exist."""
    task = entry.get("task")
    if entry.get("fixture") and entry["fixture"] not in FIXTURES:
        raise ConfigError(
            f"suite={suite} task {task}: fixture={entry['fixture']!r} is not one of {', '.join(sorted(FIXTURES))}"
        )
    for key in ("data_files", "images_files"):
        if entry.get(key) and not Path(str(entry[key])).expanduser().is_file():
            raise ConfigError(f"suite={suite} task {task}: {key}={entry[key]}: no such file")


def judge_model(entry: dict) -> str | None:
    """The API judge model ``entry`` is scored with, or None when it needs no judge."""
    if benchmark_family(entry["task"]) not in JUDGE_API_TYPES:
        return None
    if "judge" in entry:
        return entry["judge"] or None
    return os.environ.get("MODEL_VERSION") or LMMS_EVAL_DEFAULT_JUDGE


def skip_reason(entry: dict) -> str | None:
    """Why ``entry`` cannot be scored in this environment (its API judge lacks credentials), or None.

    Decided from environment variables alone, before any model or dataset is loaded; a skipped
    task is reported as skipped with this reason, never scored 0.
    """
    validate_entry(entry)
    judge = judge_model(entry)
    if judge is None:
        return None
    family = benchmark_family(entry["task"])
    api_type = os.environ.get("API_TYPE", "openai").lower()
    if api_type not in JUDGE_API_TYPES[family]:
        return (
            f"{entry['task']} is scored by an API judge ({judge}), and lmms-eval's {family} judge does not "
            f"support API_TYPE={api_type} (it supports {', '.join(JUDGE_API_TYPES[family])})"
        )
    missing = [name for name in JUDGE_CREDENTIALS[api_type] if not os.environ.get(name)]
    if missing:
        hint = "; judge: null scores it by static option matching, without an API" if family == "mmbench" else ""
        return (
            f"{entry['task']} is scored by an API judge ({judge}, API_TYPE={api_type}) and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set{hint}"
        )
    return None


def protocol_description(entry: dict) -> dict:
    """The options of ``entry`` that change published numbers, resolved to what is run."""
    family = benchmark_family(entry["task"])
    protocol = {"metric": entry["metric"], "scale": float(entry.get("scale", 1))}
    if entry.get("average_over"):
        protocol["average_over"] = entry["average_over"]
    if family == "textvqa":
        protocol["ocr_tokens"] = bool(entry.get("ocr_tokens", False))
    protocol.update({key: entry[key] for key in ("pre_prompt", "post_prompt") if entry.get(key) is not None})
    if family in JUDGE_API_TYPES:
        protocol["judge"] = judge_model(entry)
        if protocol["judge"] is None:
            protocol["scoring"] = "static option matching (lmms-eval's MMBench static scorer)"
    return protocol


def data_description(entry: dict) -> dict:
    if entry.get("fixture"):
        data = {"source": "fixture", "fixture": entry["fixture"], "digest": fixture_digest(entry["fixture"])}
    elif entry.get("data_files"):
        data = {"source": "local parquet", "data_files": str(entry["data_files"]), "split": entry.get("split")}
    else:
        data = {"source": "lmms-eval task dataset"}
    return {**data, "protocol": protocol_description(entry)}


# -- lmms-eval task definitions ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def task_manager():
    """lmms-eval's task index (building it scans every task YAML: seconds), once per process."""
    from lmms_eval.tasks import TaskManager

    quiet_lmms_eval_logging()
    return TaskManager()


@functools.cache
def task_yaml(task: str) -> dict:
    """The task's YAML config with includes resolved (``!function`` values left out)."""
    from lmms_eval.utils import load_yaml_config

    index = task_manager().task_index
    if task not in index or index[task].get("type") != "task":
        raise ConfigError(f"{task!r} is not an lmms-eval task (lmms-eval {_lmms_eval_version()})")
    return load_yaml_config(index[task]["yaml_path"], mode="simple")


def check_task(entry: dict) -> None:
    """``entry``'s task is an lmms-eval task and its metric one of the task's (from its YAML; no data loaded)."""
    metrics = [m.get("metric") for m in task_yaml(entry["task"]).get("metric_list") or []]
    missing = [part for part in entry["metric"].split("+") if metrics and part not in metrics]
    if missing:
        raise ConfigError(
            f"suite task {entry['task']}: metric={missing[0]!r} is not one of its metrics ({', '.join(metrics)})"
        )


def _lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


def task_spec(entry: dict, protocol: str | None = None, lazy_images: bool = False) -> str | dict:
    """The task name, or a dict override of that built-in task (local data, protocol options).

    The override keeps the task's filters and metric; it points the task at local parquet files,
    sets the prompt text the evaluation ``protocol`` (suite.protocol) defines for the task, and
    the options ``entry`` asks for (which win over the protocol's). ``lazy_images``: local images
    stay undecoded until a ``GC2BenchLMM`` answers their document (gc2bench.evaluation.images);
    other lmms-eval models need them decoded (the default).
    """
    from gc2bench.prompting import get_protocol

    validate_entry(entry)
    protocol_prompt, doc_to_text = get_protocol(protocol).prompt_options(entry["task"])
    task, family = entry["task"], benchmark_family(entry["task"])
    override: dict = {}
    data_files, images_file = _local_data(entry)
    if data_files:
        override.update(dataset_path="parquet", dataset_kwargs={"data_files": data_files})
        features = undecoded_features(next(iter(data_files.values()))) if lazy_images else None
        if features is not None:
            override["dataset_kwargs"]["features"] = features
    if images_file:
        override["process_docs"] = functools.partial(gqa_docs_with_local_images, images_file=images_file)
    prompt = {
        **protocol_prompt,
        **{("ocr" if key == "ocr_tokens" else key): entry[key] for key in PROMPT_KEYS if entry.get(key) is not None},
    }
    if doc_to_text is not None:
        override["doc_to_text"] = doc_to_text
    if prompt:
        kwargs = copy.deepcopy(task_yaml(task).get("lmms_eval_specific_kwargs") or {})
        if "default" not in kwargs:
            raise ConfigError(
                f"suite task {task}: its lmms-eval definition has no prompt options "
                f"(lmms_eval_specific_kwargs), so {sorted(prompt)} cannot be set"
            )
        kwargs["default"].update(prompt)
        override["lmms_eval_specific_kwargs"] = kwargs
    if family == "mmbench" and judge_model(entry) is None:
        if not any(m.get("metric") == "gpt_eval_score" for m in task_yaml(task).get("metric_list") or []):
            raise ConfigError(
                f"suite task {task}: judge: null applies to MMBench tasks scored by gpt_eval_score "
                f"(the dev splits); {task} is not"
            )
        # lmms-eval 0.7.3 has a static-scored variant of mmbench_en_dev only; this applies the same
        # scorer to every MMBench task (and drops the .xlsx submission metric).
        override["metric_list"] = [
            {"metric": "gpt_eval_score", "aggregation": mmbench_static_accuracy, "higher_is_better": True}
        ]
    return {"task": task, **override} if override else task


def _local_data(entry: dict) -> tuple[dict | None, str | None]:
    """({split: parquet path}, GQA image-table path) for ``entry``'s local data, or Nones."""
    task = entry["task"]
    images = entry.get("images_files")
    if entry.get("fixture"):
        name = entry["fixture"]
        split = task_yaml(task).get("test_split") or fixture_split(name)
        companion = COMPANIONS.get(name)
        if companion and not images:
            images = build_fixture(companion)
        return {split: str(build_fixture(name))}, (str(images) if images else None)
    if entry.get("data_files"):
        if not entry.get("split"):
            raise ConfigError(f"suite task {task}: data_files needs `split` (the split the task reads)")
        return {entry["split"]: str(entry["data_files"])}, (str(images) if images else None)
    if images:
        raise ConfigError(f"suite task {task}: images_files needs local instructions (`fixture` or `data_files`)")
    return None, None


def gqa_docs_with_local_images(dataset, images_file: str):
    """lmms-eval's own ``gqa_process_docs`` (join on ``imageId``), reading the image table from a local file.

    Its ``load_dataset("lmms-lab-encoder/GQA", "testdev_balanced_images")`` is pointed at
    ``images_file`` (a parquet file with the hub config's ``id`` and ``image`` columns).
    """
    import importlib.util

    import datasets

    spec = importlib.util.spec_from_file_location("gc2bench_gqa_utils", _task_dir("gqa") / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.load_dataset = lambda *args, **kwargs: datasets.load_dataset(
        "parquet", data_files=images_file, split="train"
    )
    return module.gqa_process_docs(dataset)


def _task_dir(task: str) -> Path:
    return Path(task_manager().task_index[task]["yaml_path"]).parent


def mmbench_static_accuracy(results, args=None) -> float:
    """MMBench accuracy (%) with lmms-eval's static option matching: ``MMBench_Evaluator.eval_result``
    with ``eval_method="static"``, the scorer of its ``mmbench_en_dev_static`` task (circular
    variants must all be right; answers no letter is read from count as wrong; no API call)."""
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    overall, _, _ = MMBench_Evaluator(sys_prompt="There are several options:").eval_result(results, "static")
    return overall * 100


@contextlib.contextmanager
def judge_environment(entry: dict):
    """Set ``MODEL_VERSION`` (the judge model lmms-eval's MMBench / MM-Vet code reads when the task
    is loaded) to ``entry``'s judge, and restore it afterwards."""
    judge = judge_model(entry)
    previous = os.environ.get("MODEL_VERSION")
    if judge:
        os.environ["MODEL_VERSION"] = judge
    try:
        yield
    finally:
        if judge:
            if previous is None:
                os.environ.pop("MODEL_VERSION", None)
            else:
                os.environ["MODEL_VERSION"] = previous


def load_task(entry: dict, protocol: str | None = None, lazy_images: bool = False):
    """lmms-eval's task object for ``entry`` (its real definition, with ``task_spec``'s overrides)."""
    from lmms_eval.tasks import get_task_dict

    with judge_environment(entry):
        return get_task_dict([task_spec(entry, protocol, lazy_images)], task_manager())[entry["task"]]


# -- evaluation ----------------------------------------------------------------------------------------


def executor_backend() -> str:
    """lmms-eval's collectives: ``torch.distributed`` under a torchrun launch (``WORLD_SIZE`` > 1,
    process group initialised by the run), otherwise its default (accelerate; no collectives at 1 rank)."""
    return "torchrun" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else "accelerate"


def evaluate_task(
    lm, entry: dict, limit: int | None = None, seed: int = 0, output_dir: str | Path | None = None
) -> TaskResult | None:
    """Evaluate ``lm`` on one suite entry; metrics keyed as lmms-eval names them (without filter).

    ``metrics["score"]`` is the headline (``entry["metric"]`` × ``scale``); each sample row
    carries ``metric_value``, lmms-eval's per-document value of the headline metric. Files the
    task's aggregation writes (submission files) go to ``output_dir`` (default: discarded).
    Raises ``TaskSkipped`` when ``skip_reason(entry)`` is set, before anything runs.
    """
    import time

    from lmms_eval.evaluator import simple_evaluate

    reason = skip_reason(entry)
    if reason:
        raise TaskSkipped(entry["task"], reason)
    name = entry["task"]
    task = load_task(entry, lm.protocol.name, lazy_images=True)
    parts = entry["metric"].split("+")
    missing = [part for part in parts if part not in task.aggregation()]
    if missing:
        raise ConfigError(
            f"suite task {name}: metric {missing[0]!r} is not one of its metrics ({', '.join(task.aggregation())})"
        )
    lm.sample_stats.clear()
    lm.failures.clear()
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            output_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gc2bench-lmms-eval-"))
        args = SimpleNamespace(process_with_media=False, output_path=str(output_dir))
        start = time.perf_counter()
        # Scoring reads documents without decoding their images (lmms-eval's CLI default), so an
        # unreadable image fails its own sample only.
        with task_progress():
            output = simple_evaluate(
                model=lm,
                tasks=[task],
                task_manager=task_manager(),
                limit=limit,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=0,
                cli_args=args,
                distributed_executor_backend=executor_backend(),
            )
        wall_s = time.perf_counter() - start
        if output is None:  # a data-parallel rank other than 0: rank 0 aggregates and reports
            return None
        raw = output["results"][name]
        metrics = {
            key.split(",")[0]: value
            for key, value in raw.items()
            if isinstance(value, (int, float)) and not key.startswith(("alias", "sample")) and "_stderr" not in key
        }
        failed = {failure["doc_id"] for failure in lm.failures}
        logged = output.get("samples", {}).get(name, [])
        kept = [sample for sample in logged if sample["doc_id"] not in failed]
        if failed:
            # Failed samples are skipped, not scored: re-aggregate the task's own metrics without them.
            for metric in task.aggregation():
                if metric in metrics:
                    values = [sample[metric] for sample in kept if metric in sample]
                    metrics[metric] = _aggregate(task, metric, values, args) if values else None
        if benchmark_family(name) == "mmvet":
            _check_judged(kept, judge_model(entry))
        headline, metric_name = _headline(task, entry, metrics, kept, args)
    samples = []
    for sample in kept:
        row = {
            "doc_id": sample["doc_id"],
            "answer": _first(sample.get("filtered_resps")),
            "target": sample.get("target"),
            "metric_value": next((sample[part] for part in parts if part in sample), None),
        }
        if entry.get("average_over"):
            row["group"] = (sample.get("doc") or {}).get(entry["average_over"])
        row.update(lm.sample_stats.get((name, sample["doc_id"]), {}))
        samples.append(row)
    scale = float(entry.get("scale", 1))
    metrics["metric"] = metric_name
    metrics["scale"] = scale
    metrics["score"] = None if headline is None else headline * scale
    return TaskResult(metrics, samples, list(lm.failures), wall_s)


def _aggregate(task, metric: str, values: list, args):
    import inspect

    aggregate = task.aggregation()[metric]
    if "args" in inspect.signature(aggregate).parameters:
        return aggregate(values, args=args)
    return aggregate(values)


def _headline(task, entry: dict, metrics: dict, kept: list[dict], args) -> tuple[float | None, str]:
    """(headline value before scaling, its name): one metric, a sum a+b, or a mean over groups."""
    parts = entry["metric"].split("+")
    field = entry.get("average_over")
    if field:
        metric = parts[0]
        groups: dict = {}
        for sample in kept:
            if metric in sample:
                groups.setdefault((sample.get("doc") or {}).get(field), []).append(sample[metric])
        if None in groups:
            raise ConfigError(f"suite task {entry['task']}: average_over={field!r} is not a field of its documents")
        per_group = {group: _aggregate(task, metric, values, args) for group, values in sorted(groups.items())}
        for group, value in per_group.items():
            metrics[f"{metric}[{field}={group}]"] = value
        return (statistics.fmean(per_group.values()) if per_group else None), f"{metric} (mean over {field})"
    values = [metrics.get(part) for part in parts]
    return (None if any(v is None for v in values) else sum(values)), entry["metric"]


def _check_judged(samples: list[dict], judge: str | None) -> None:
    unjudged = [
        s["doc_id"]
        for s in samples
        if isinstance(s.get("gpt_eval_score"), dict) and not s["gpt_eval_score"].get("eval_model")
    ]
    if unjudged:
        raise JudgeFailed(
            f"mmvet: the API judge ({judge}) returned no score for documents {unjudged}; "
            f"lmms-eval scores those 0, so no score is reported (check the judge's credentials "
            f"and URL)"
        )


MEASURED = ("vision_ms", "compression_ms", "prefill_ms", "decode_ms", "peak_memory_mb")


def summarize(samples: list[dict], failures: list[dict], wall_s: float) -> tuple[dict, dict]:
    """Token accounting and efficiency figures of a task from its per-sample rows.

    Measured figures (``MEASURED``) leave out the run's warm-up samples (``warmup``: the first
    batch the model answered in this process, cold kernels and allocator); token counts and the
    analytic figures use every sample.
    """

    def stat(key, rows=samples):
        values = [s[key] for s in rows if s.get(key) is not None]
        if not values:
            return None
        values.sort()
        return {
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "p90": values[min(len(values) - 1, int(0.9 * len(values)))],
            "max": values[-1],
        }

    timed = [s for s in samples if not s.get("warmup")]
    tokens = {
        key: stat(key)
        for key in (
            "visual_tokens_before",
            "visual_tokens_kept",
            "newline_tokens_before",
            "newline_tokens_kept",
            "layer_averaged_image_tokens",
        )
    }
    tokens.update(equivalent_tokens(samples, stat))
    efficiency = {key: stat(key, timed) for key in MEASURED}
    efficiency.update({key: stat(key) for key in ("analytic_tflops", "kv_cache_mb")})
    efficiency.update(
        {
            "wall_s": wall_s,
            "samples": len(samples),
            "failed_samples": len(failures),
            "warmup_samples": len(samples) - len(timed),
            "samples_per_s": len(samples) / wall_s if wall_s > 0 else None,
        }
    )
    return tokens, efficiency


def equivalent_tokens(samples: list[dict], stat) -> dict:
    """The layer-averaged ("equivalent") image tokens and share of a task, newlines counted and not
    (``gc2bench.models.adapter.EQUIVALENT_CONVENTION``, recorded beside them); ``stat`` summarises a key."""
    from gc2bench.models.adapter import EQUIVALENT_CONVENTION

    rows = []
    for s in samples:
        tokens, newlines = s.get("equivalent_image_tokens"), s.get("equivalent_newline_tokens")
        before, newlines_before = s.get("visual_tokens_before"), s.get("newline_tokens_before") or 0
        row = {"equivalent_image_tokens": tokens}
        if tokens is not None and before:
            row["equivalent_share"] = tokens / before
        if tokens is not None and newlines is not None:
            row["equivalent_image_tokens_without_newlines"] = tokens - newlines
            if before and before > newlines_before:
                row["equivalent_share_without_newlines"] = (tokens - newlines) / (before - newlines_before)
        rows.append(row)
    keys = (
        "equivalent_image_tokens",
        "equivalent_share",
        "equivalent_image_tokens_without_newlines",
        "equivalent_share_without_newlines",
    )
    return {**{key: stat(key, rows) for key in keys}, "equivalent_convention": EQUIVALENT_CONVENTION}


def _first(value):
    while isinstance(value, list) and value:
        value = value[0]
    return value
