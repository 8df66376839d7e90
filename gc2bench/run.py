"""One run, top to bottom: validate, build the compressor, skip finished tasks, load the
model, evaluate each task through lmms-eval, write one record per task, print a summary."""

from __future__ import annotations

import sys

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gc2bench.config import ConfigError, validate
from gc2bench.results.records import (git_commit, is_done, package_versions, record_path, run_dir,
                                      write_record)


def run(cfg: DictConfig) -> list[dict]:
    validate(cfg)
    compressor = build_compressor(cfg)
    params = compressor.params()
    directory = run_dir(cfg.results_dir, cfg.model.name, compressor.name, params)
    entries = [OmegaConf.to_container(entry, resolve=True) for entry in cfg.suite.tasks]
    todo = [e for e in entries if cfg.overwrite or not is_done(record_path(directory, e["task"]))]
    for entry in entries:
        if entry not in todo:
            print(f"skip {entry['task']}: record exists in {directory} (overwrite=true to redo)")
    if not todo:
        return []

    from gc2bench.evaluation.suite import data_description, evaluate_task, summarize, use_offline_hub

    if all(entry.get("fixture") or entry.get("data_files") for entry in todo):
        use_offline_hub()
    from gc2bench.evaluation.lmms_model import GC2BenchLMM

    adapter = build_model(cfg, compressor)
    compressor_record = {"name": compressor.name, "params": params}
    if adapter.pruner is not None and hasattr(compressor, "schedule_info"):
        compressor_record["schedule"] = compressor.schedule_info(len(adapter.pruner.layers))
    lm = GC2BenchLMM(adapter, batch_size=cfg.suite.batch_size)
    config = OmegaConf.to_container(cfg, resolve=True)
    records = []
    for entry in todo:
        result = evaluate_task(lm, entry, limit=cfg.suite.limit, seed=cfg.seed)
        tokens, efficiency = summarize(result.samples, result.failures, result.wall_s)
        record = {
            "model": adapter.describe(),
            "compressor": compressor_record,
            "ratio": params.get("ratio", 1.0),
            "task": entry["task"],
            "suite": cfg.suite.name,
            "data": data_description(entry),
            "metrics": result.metrics,
            "tokens": tokens,
            "efficiency": efficiency,
            "failures": result.failures,
            "samples": result.samples,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "config": config,
            "status": "done",
        }
        path = write_record(record_path(directory, entry["task"]), record)
        records.append(record)
        print(f"wrote {path}", file=sys.stderr)
    print_summary(records)
    return records


def _instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` whose config and load errors surface as one clear error, not a wrapper."""
    from gc2bench.models.adapter import ModelLoadError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigError, ModelLoadError)):
            raise cause
        if isinstance(cause, ValueError):  # a component rejected its options
            raise ConfigError(str(cause)) from cause
        raise


def build_compressor(cfg: DictConfig):
    return _instantiate(cfg.compressor)


def build_model(cfg: DictConfig, compressor):
    """The model adapter of ``cfg.model`` around ``compressor``."""
    return _instantiate(cfg.model, compressor=compressor, _convert_="all")


def print_summary(records: list[dict]) -> None:
    header = f"{'task':<14} {'metric':<16} {'score':>7}  {'visual tokens before → kept':>40}  {'prefill ms':>10}"
    print(header)
    for r in records:
        before, kept = r["tokens"]["visual_tokens_before"], r["tokens"]["visual_tokens_kept"]
        prefill = r["efficiency"]["prefill_ms"]
        score = r["metrics"]["score"]
        score = "–" if score is None else f"{score:.2f}"
        tokens = f"{before['mean']:.1f} → {kept['mean']:.1f}" if before and kept else "–"
        averaged = r["tokens"].get("layer_averaged_image_tokens")
        if averaged:
            tokens += f" (layer avg {averaged['mean']:.1f})"
        prefill = "–" if not prefill else f"{prefill['median']:.2f}"
        print(f"{r['task']:<14} {r['metrics']['metric']:<16} {score:>7}  {tokens:>40}  {prefill:>10}")
    failed = sum(r["efficiency"]["failed_samples"] for r in records)
    if failed:
        print(f"{failed} sample(s) failed; see `failures` in the records")
