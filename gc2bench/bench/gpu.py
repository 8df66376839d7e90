"""`gc2bench bench gpu`: the project's GPU claims checked in one command, within a time budget.

Parts, in order, each with a share of ``--budget`` seconds (default 480); a part stops starting new work
when its share is spent, and what did not fit is listed under ``not_run``:

- ``tests``: the gpu-marked tests (``pytest -m gpu``) of the checkout, where its tests/ folder exists.
- ``llava_next``: LLaVA-NeXT-7B shapes with random weights (``bench prefill``'s preset, no download), bf16,
  SDPA (and flash-attention 2 for none / globalcom2 / fastv where ``flash_attn`` is installed); for none and
  every conf/compressor at each R on the preset's largest square grid image (672×672: 2×2 crops +
  thumbnail) with a POPE-length prompt, ``--decode-tokens`` forced new tokens: prefill ms, decode ms per
  token, peak memory, samples/s at batch 1; measured and analytic (TFLOPs) prefill speedup over none;
  selection + packing as % of the row's prefill; host syncs inside selection (the compressor's ``select`` /
  ``query_rows`` / ``prune``) and in the whole compression path (+ packing), counted with
  ``torch.cuda.set_sync_debug_mode``. Then, budget allowing, the largest batch (doubling up to
  ``--max-batch``) each row fits, its samples/s and peak memory, and whether the batch's first answers
  equal the same images answered alone (globalcom2 at the lowest R and none first).
- ``onevision``: the same for LLaVA-OneVision-7B shapes (SigLIP: CLS-scored methods run with score=cosine).
- ``kv_cache``: KV-cache generation ≡ no-cache recomputation of the pruned sequence for every LLM-stage
  method (same greedy tokens; largest |Δ logit| relative to the largest |logit| ≤ ``KV_TOLERANCE``:
  2e-2 in bf16, 1e-5 in float32).

Without a CUDA device the same command runs at tiny shapes (presets ``tiny``, ``tiny_onevision``) in
float32 on the CPU: that is its test, so it cannot rot between GPU runs. Writes ``bench_gpu.json`` and
``bench_gpu.md`` to ``--out`` and prints the markdown; ``goals`` says, on a GPU, whether BENCHMARKS.md's
targets hold.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from gc2bench.bench.prefill import (
    ARCHITECTURES,
    bench_image_size,
    bench_model_dir,
    check_supported,
    compose_compressor,
    model_config,
    synthetic_images,
)
from gc2bench.efficiency.flops import DecoderShape
from gc2bench.efficiency.timing import collector_paused, now
from gc2bench.errors import ConfigError

PROMPT = "Is there a dog in the image? Answer the question using a single word or phrase."
PART_SHARES = {"tests": 0.12, "llava_next": 0.45, "onevision": 0.25, "kv_cache": 0.13}
MODELS = {
    "llava_next": {"cuda": "llava_next_7b", "cpu": "tiny"},
    "onevision": {"cuda": "llava_onevision_7b", "cpu": "tiny_onevision"},
}
KV_RATIO = 0.5  # reachable by every LLM-stage method's default schedule, on 4 layers too
KV_TOLERANCE = {"bfloat16": 2e-2, "float16": 2e-2, "float32": 1e-5}
GOALS = (
    "GlobalCom² R=0.1 prefill >= 8x faster than none at 7B shapes",
    "selection + packing < 1% of the compressed prefill",
    "zero host syncs inside selection",
    "batched throughput at R=0.1 >= 5x the uncompressed batch-1 throughput",
    "the batch's answers identical to batch-1 answers",
)


@dataclass
class Budget:
    """Wall-clock shares of one run: ``part(name)`` starts a part's clock, ``left()`` is what remains of it."""

    total_s: float
    started: float = field(default_factory=time.monotonic)
    part_deadline: float = 0.0

    def part(self, name: str) -> None:
        self.part_deadline = min(time.monotonic() + PART_SHARES[name] * self.total_s, self.deadline)

    @property
    def deadline(self) -> float:
        return self.started + self.total_s

    def left(self) -> float:
        return self.part_deadline - time.monotonic()


class SyncCounter:
    """Counts host-device synchronisations (CUDA's sync debug warnings) inside wrapped calls; None on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.counts = {"selection": 0, "compression": 0}

    def wrap(self, owner, method: str, *scopes: str) -> None:
        original = getattr(owner, method)

        def counted(*args, **kwargs):
            if not self.cuda:
                return original(*args, **kwargs)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                previous = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    return original(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode(previous)
                    syncs = sum("synchronizing" in str(w.message) for w in caught)
                    for scope in scopes:
                        self.counts[scope] += syncs

        setattr(owner, method, counted)

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)

    def read(self) -> dict | None:
        return dict(self.counts) if self.cuda else None


def _methods(names, ratios, num_layers: int, vision_has_cls: bool, adapter) -> list:
    """none, then each compressor at each R (once where the compressor ignores R), as run.py composes them."""
    from gc2bench.bench.prefill import Method
    from gc2bench.compressors.none import NoCompression

    methods = [Method("none", 1.0, NoCompression())]
    for name in names:
        for ratio in ratios:
            method = check_supported(compose_compressor(name, ratio, num_layers, vision_has_cls), adapter)
            methods.append(method)
            if method.compressor is not None and method.compressor.params().get("ratio") != ratio:
                break  # the compressor ignores R (views, drop_crop, adaptive PruMerge): one row
    return methods


def _generate(adapter, images, tokens: int, **kwargs):
    with collector_paused(collect_first=True):
        start = now(adapter.device)
        generations = adapter.generate(
            [PROMPT] * len(images),
            [[image] for image in images],
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            **kwargs,
        )
        return generations, now(adapter.device) - start


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _batch1_row(adapter, method, pictures, syncs: SyncCounter, decode_tokens: int, repeats: int) -> dict:
    """Batch-1 figures of one method (median over ``repeats`` after one warm-up generate)."""
    row = {
        "method": method.name,
        "ratio": method.ratio,
        "overrides": method.overrides,
        "attn": adapter.config._attn_implementation,
        "status": method.status,
    }
    if method.status != "ok":
        row["reason"] = method.reason
        return row
    adapter.use_compressor(method.compressor)
    compressor = adapter.compressor
    for name in ("select", "query_rows", "prune"):
        if callable(getattr(compressor, name, None)):
            syncs.wrap(compressor, name, "selection", "compression")
    syncs.wrap(adapter, "pack", "compression")
    try:
        _generate(adapter, pictures[:1], decode_tokens)
        syncs.reset()
        stats, walls, answers = [], [], []
        for _ in range(repeats):
            generations, wall = _generate(adapter, pictures[:1], decode_tokens)
            stats.append(generations[0].stats)
            walls.append(wall)
            answers = [generations[0].token_ids]
        counts = syncs.read()
    except Exception as error:  # one row's failure (OOM, an attention implementation the pruner lacks) is data
        row.update(status="oom" if _is_oom(error) else "error", reason=f"{type(error).__name__}: {error}"[:300])
        _release(adapter.device)
        return row
    finally:
        del adapter.pack  # the instance attribute set by wrap
    steps = max(decode_tokens - 1, 1)
    averaged = [s.layer_averaged_image_tokens for s in stats]
    row.update(
        visual_tokens_kept=stats[0].visual_tokens_kept,
        visual_tokens_before=stats[0].visual_tokens_before,
        layer_averaged_image_tokens=None if averaged[0] is None else statistics.mean(averaged),
        tflops=statistics.mean(s.analytic_tflops for s in stats),
        prefill_ms=statistics.median(s.prefill_ms for s in stats),
        decode_ms_per_token=statistics.median(s.decode_ms / steps for s in stats),
        vision_ms=statistics.median(s.vision_ms for s in stats),
        compression_ms=statistics.median(s.compression_ms for s in stats),
        peak_memory_mb=max((s.peak_memory_mb for s in stats if s.peak_memory_mb is not None), default=None),
        samples_per_s=1 / statistics.median(walls),
        answer_token_ids=answers[0],
        host_syncs=None if counts is None else {scope: count / repeats for scope, count in counts.items()},
    )
    row["compression_pct_of_prefill"] = 100 * row["compression_ms"] / row["prefill_ms"]
    return row


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _largest_batch(adapter, method, pictures, row: dict, decode_tokens: int, max_batch: int, budget: Budget) -> None:
    """Double the batch until it no longer fits, ``max_batch`` or the budget; record the largest that ran."""
    adapter.use_compressor(method.compressor)
    size, best = 2, None
    while size <= max_batch and budget.left() > 0:
        images = [pictures[i % len(pictures)] for i in range(size)]
        try:
            generations, wall = _generate(adapter, images, decode_tokens)
        except Exception as error:
            if not _is_oom(error):
                row["batch_error"] = f"{type(error).__name__}: {error}"[:300]
            _release(adapter.device)
            break
        peak = max((g.stats.peak_memory_mb for g in generations if g.stats.peak_memory_mb is not None), default=None)
        best = {
            "batch": size,
            "samples_per_s": size / wall,
            "peak_memory_mb": peak,
            "first_answer_matches_batch1": generations[0].token_ids == row["answer_token_ids"],
        }
        size *= 2
    if best is not None:
        row["largest_batch"] = best


def _model_part(
    part: str,
    device: torch.device,
    dtype: str,
    compressors,
    ratios,
    budget: Budget,
    decode_tokens: int,
    max_batch: int,
    repeats: int,
    log,
) -> dict:
    from gc2bench.compressors.none import NoCompression

    model = MODELS[part][device.type]
    directory = bench_model_dir(model)
    architecture = ARCHITECTURES[model_config(str(directory)).model_type]
    attns = ["sdpa"] + (
        ["flash_attention_2"] if device.type == "cuda" and importlib.util.find_spec("flash_attn") else []
    )
    result = {"model": model, "dtype": dtype, "rows": [], "not_run": []}
    for attn in attns:
        adapter = architecture.adapter_class(
            str(directory), NoCompression(), name=model, dtype=dtype, device=str(device), attn_implementation=attn
        )
        image_size = bench_image_size(adapter)
        pictures = synthetic_images(2, image_size)
        result.setdefault("image_size", list(image_size))
        shape = DecoderShape.from_config(adapter.config)
        names = compressors if attn == "sdpa" else [n for n in ("globalcom2", "fastv") if n in compressors]
        methods = _methods(
            names, ratios if attn == "sdpa" else [min(ratios)], shape.num_layers, architecture.vision_has_cls, adapter
        )
        syncs = SyncCounter(adapter.device)
        rows = []
        for method in methods:
            if budget.left() <= 0:
                result["not_run"].append(f"{part} {attn} {method.name} R={method.ratio:g}")
                continue
            rows.append((method, _batch1_row(adapter, method, pictures, syncs, decode_tokens, repeats)))
            log(f"{part} {attn}: {method.name} R={method.ratio:g} {rows[-1][1]['status']}")
        reference = rows[0][1] if rows and rows[0][1]["status"] == "ok" else None
        for _, row in rows:
            if reference is not None and row["status"] == "ok":
                row["speedup"] = reference["prefill_ms"] / row["prefill_ms"]
                row["analytic_speedup"] = reference["tflops"] / row["tflops"]
        low = min(ratios)
        priority = sorted(
            rows, key=lambda mr: (not (mr[0].name == "globalcom2" and mr[0].ratio == low), mr[0].name != "none")
        )
        for method, row in priority:
            if row["status"] != "ok":
                continue
            if budget.left() <= 0:
                result["not_run"].append(f"{part} {attn} largest batch: {method.name} R={method.ratio:g}")
                continue
            _largest_batch(adapter, method, pictures, row, decode_tokens, max_batch, budget)
        result["rows"] += [row for _, row in rows]
        del adapter
        _release(device)
    return result


def _kv_cache_part(device: torch.device, dtype: str, budget: Budget, log) -> dict:
    """KV-cache generation ≡ no-cache recomputation for every LLM-stage conf/compressor (LLaVA-NeXT shapes), at R = KV_RATIO."""
    from gc2bench.compressors.none import NoCompression
    from gc2bench.config import config_names

    model = MODELS["llava_next"][device.type]
    directory = bench_model_dir(model)
    architecture = ARCHITECTURES[model_config(str(directory)).model_type]
    adapter = architecture.adapter_class(str(directory), NoCompression(), name=model, dtype=dtype, device=str(device))
    pictures = synthetic_images(1, bench_image_size(adapter))
    shape = DecoderShape.from_config(adapter.config)
    tolerance = KV_TOLERANCE[dtype]
    result = {"model": model, "dtype": dtype, "tolerance": tolerance, "rows": [], "not_run": []}
    methods = [
        compose_compressor(name, KV_RATIO, shape.num_layers, architecture.vision_has_cls)
        for name in config_names("compressor")
    ]
    for method in methods:
        if method.compressor is None or method.compressor.kind != "llm":
            continue
        if budget.left() <= 0:
            result["not_run"].append(f"kv_cache {method.name}")
            continue
        adapter.use_compressor(method.compressor)
        options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_scores=True)
        cached = adapter.generate([PROMPT], [pictures], **options)[0]
        records = adapter.last_plan.records
        recomputed = adapter.generate([PROMPT], [pictures], use_cache=False, prune_replay=records, **options)[0]
        a, b = cached.scores.float(), recomputed.scores.float()
        difference = float(torch.where(a == b, 0.0, (a - b).abs()).max())  # equal -inf (suppressed EOS) is 0
        relative = difference / float(a[a.isfinite()].abs().max())
        same = cached.token_ids == recomputed.token_ids
        result["rows"].append(
            {
                "method": method.name,
                "ratio": KV_RATIO,
                "same_tokens": same,
                "max_abs_logit_diff": difference,
                "relative_diff": relative,
                "ok": same and relative <= tolerance,
            }
        )
        log(f"kv_cache: {method.name} {'ok' if result['rows'][-1]['ok'] else 'DIFFERS'} (relative {relative:.2e})")
    return result


def _tests_part(budget: Budget) -> dict:
    tests = Path(__file__).resolve().parents[2] / "tests"
    if not tests.is_dir():
        return {"status": "not run", "reason": f"no tests/ folder at {tests} (a wheel install)"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", str(tests)],
            capture_output=True,
            text=True,
            timeout=max(budget.left(), 1),
            cwd=tests.parent,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "reason": f"over its {PART_SHARES['tests']:.0%} share of the budget"}
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"status": "passed" if done.returncode == 0 else "failed", "exit": done.returncode, "summary": summary}


def _goals(result: dict) -> list[dict]:
    """BENCHMARKS.md's GPU targets against the LLaVA-NeXT rows (7B shapes only: None on CPU)."""
    rows = [
        r for r in result["parts"].get("llava_next", {}).get("rows", []) if r["status"] == "ok" and r["attn"] == "sdpa"
    ]
    if result["device"] == "cpu" or not rows:
        return [{"goal": goal, "met": None} for goal in GOALS]
    none = next((r for r in rows if r["method"] == "none"), None)
    ours = next((r for r in rows if r["method"] == "globalcom2" and abs(r["ratio"] - 0.1) < 1e-9), None)
    if none is None or ours is None:
        return [{"goal": goal, "met": None} for goal in GOALS]
    batch = ours.get("largest_batch") or {}
    values = [
        ours["speedup"],
        ours["compression_pct_of_prefill"],
        (ours.get("host_syncs") or {}).get("selection"),
        batch.get("samples_per_s", 0) / none["samples_per_s"],
        batch.get("first_answer_matches_batch1"),
    ]
    met = [values[0] >= 8, values[1] < 1, values[2] == 0, values[3] >= 5, values[4] is True]
    return [{"goal": goal, "value": value, "met": ok} for goal, value, ok in zip(GOALS, values, met)]


def bench_gpu_result(
    budget_s: float = 480,
    compressors=None,
    ratios=(0.5, 0.25, 0.1),
    decode_tokens: int = 8,
    max_batch: int = 32,
    repeats: int = 3,
    parts=tuple(PART_SHARES),
    log=None,
) -> dict:
    """Run the parts (see the module docstring) and return one JSON-able result."""
    from gc2bench.config import config_names, validate_ratio

    known = config_names("compressor")
    compressors = [c for c in known if c != "none"] if compressors is None else list(compressors)
    unknown = [c for c in compressors if c not in known]
    if unknown:
        raise ConfigError(f"--compressors: unknown {', '.join(unknown)} (available: {', '.join(known)})")
    bad_parts = [p for p in parts if p not in PART_SHARES]
    if bad_parts:
        raise ConfigError(f"--parts: unknown {', '.join(bad_parts)} (available: {', '.join(PART_SHARES)})")
    ratios = [validate_ratio(r) for r in ratios]
    if budget_s <= 0 or decode_tokens < 2 or max_batch < 1 or repeats < 1:
        raise ConfigError(
            f"--budget ({budget_s}) must be > 0, --decode-tokens ({decode_tokens}) >= 2, "
            f"--max-batch ({max_batch}) and --repeats ({repeats}) >= 1"
        )
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    budget = Budget(budget_s)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device.type,
        "machine": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": dtype,
        "budget_s": budget_s,
        "ratios": ratios,
        "decode_tokens": decode_tokens,
        "parts": {},
        "not_run": [],
    }
    for part in PART_SHARES:
        if part not in parts:
            continue
        if time.monotonic() >= budget.deadline:
            result["not_run"].append(part)
            continue
        budget.part(part)
        log(f"bench gpu: {part} (up to {budget.left():.0f} s)")
        if part == "tests":
            result["parts"][part] = _tests_part(budget)
        elif part == "kv_cache":
            result["parts"][part] = _kv_cache_part(device, dtype, budget, log)
        else:
            result["parts"][part] = _model_part(
                part, device, dtype, compressors, ratios, budget, decode_tokens, max_batch, repeats, log
            )
        result["not_run"] += result["parts"][part].get("not_run", [])
    result["elapsed_s"] = time.monotonic() - budget.started
    result["goals"] = _goals(result)
    return result


def _f(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def format_markdown(result: dict) -> str:
    lines = [
        f"# gc2bench bench gpu — {result['date']}, {result['machine']} ({result['device']}, {result['dtype']}, "
        f"torch {result['torch']}), {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget",
        "",
    ]
    tests = result["parts"].get("tests")
    if tests:
        lines += [f"gpu-marked tests: {tests['status']} {tests.get('summary') or tests.get('reason', '')}", ""]
    for part in ("llava_next", "onevision"):
        data = result["parts"].get(part)
        if not data:
            continue
        lines += [
            f"## {data['model']} ({data['dtype']}, image {data['image_size'][1]}×{data['image_size'][0]})",
            "",
            "| method | R | attn | kept | layer avg | TFLOPs | prefill ms | speedup | analytic | decode ms/tok "
            "| compress % | syncs sel/all | peak MB | samples/s | largest batch | batch samples/s | batch = single |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in data["rows"]:
            if row["status"] != "ok":
                lines.append(
                    f"| {row['method']} | {row['ratio']:g} | {row['attn']} | {row['status']}: "
                    f"{row.get('reason', '')} |" + " |" * 13
                )
                continue
            syncs = row.get("host_syncs")
            sync_cell = "–" if syncs is None else f"{syncs['selection']:g}/{syncs['compression']:g}"
            batch = row.get("largest_batch") or {}
            lines.append(
                f"| {row['method']} | {row['ratio']:g} | {row['attn']} | {row['visual_tokens_kept']} | "
                f"{_f(row['layer_averaged_image_tokens'], '.1f')} | {row['tflops']:.3g} | {row['prefill_ms']:.1f} | "
                f"{_f(row.get('speedup'), '.2f')}× | {_f(row.get('analytic_speedup'), '.2f')}× | "
                f"{row['decode_ms_per_token']:.2f} | {row['compression_pct_of_prefill']:.2f} | "
                f"{sync_cell} | "
                f"{_f(row['peak_memory_mb'], '.0f')} | {row['samples_per_s']:.2f} | {batch.get('batch', '–')} | "
                f"{_f(batch.get('samples_per_s'), '.2f')} | {batch.get('first_answer_matches_batch1', '–')} |"
            )
        lines.append("")
    kv = result["parts"].get("kv_cache")
    if kv:
        lines += [
            f"## KV cache ≡ recomputation ({kv['model']}, {kv['dtype']}, relative tolerance {kv['tolerance']:g})",
            "",
            "| method | R | same tokens | max abs Δlogit | relative | ok |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['ratio']:g} | {r['same_tokens']} | {r['max_abs_logit_diff']:.3g} | "
            f"{r['relative_diff']:.2e} | {r['ok']} |"
            for r in kv["rows"]
        ]
        lines.append("")
    lines += ["## Goals (BENCHMARKS.md)", ""]
    lines += [
        f"- {g['goal']}: "
        + ("n/a (no GPU: tiny shapes)" if g["met"] is None else f"{'met' if g['met'] else 'NOT met'} ({g['value']})")
        for g in result["goals"]
    ]
    if result["not_run"]:
        lines += ["", "Not run (budget): " + "; ".join(result["not_run"])]
    return "\n".join(lines)


def bench_gpu(
    budget_s: float = 480,
    out: str | None = None,
    compressors: str | None = None,
    ratios: str = "0.5,0.25,0.1",
    decode_tokens: int = 8,
    max_batch: int = 32,
    repeats: int = 3,
    parts: str | None = None,
) -> int:
    """The CLI command: run, write bench_gpu.json and bench_gpu.md under ``out``, print the markdown."""
    from gc2bench.bench.prefill import parse_list

    result = bench_gpu_result(
        budget_s,
        None if compressors is None else parse_list(compressors, "compressors", str),
        parse_list(ratios, "ratios", float),
        decode_tokens,
        max_batch,
        repeats,
        tuple(PART_SHARES) if parts is None else tuple(parse_list(parts, "parts", str)),
    )
    folder = Path(out or f"bench_gpu/{result['date'].replace(':', '')}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_gpu.json").write_text(json.dumps(result, indent=1))
    markdown = format_markdown(result)
    (folder / "bench_gpu.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwrote {folder / 'bench_gpu.json'} and {folder / 'bench_gpu.md'}", file=sys.stderr)
    return 0
