"""Measured figures in runs: warm-up samples left out of timings, garbage collector paused while
answering, peak memory per sample (CUDA only)."""

import gc
import statistics

import numpy as np
from PIL import Image

from gc2bench.compressors.none import NoCompression
from gc2bench.config import compose_run_config
from gc2bench.evaluation.suite import summarize
from gc2bench.models.llava_next import LlavaNextAdapter
from gc2bench.run import run


def test_the_first_batch_is_warmup_and_the_collector_is_paused_while_answering(tiny_path):
    adapter = LlavaNextAdapter(str(tiny_path), NoCompression(), dtype="float32", device="cpu")
    collector_on = []
    adapter.model.model.language_model.register_forward_pre_hook(lambda *_: collector_on.append(gc.isenabled()))
    image = Image.fromarray((np.random.RandomState(0).rand(60, 90, 3) * 255).astype("uint8"))
    first = adapter.generate(["Is there a cat?"] * 2, [[image], [image]], max_new_tokens=2, do_sample=False)
    second = adapter.generate(["Is there a cat?"], [[image]], max_new_tokens=2, do_sample=False)
    assert [g.stats.warmup for g in first + second] == [True, True, False]
    assert collector_on and not any(collector_on) and gc.isenabled()
    assert all(g.stats.peak_memory_mb is None for g in first + second)  # CPU: no per-call peak


def test_summaries_leave_warmup_samples_out_of_measured_figures_only():
    samples = [
        {"prefill_ms": 900.0, "vision_ms": 50.0, "visual_tokens_kept": 10, "analytic_tflops": 1.0, "warmup": True}
    ] + [
        {"prefill_ms": float(ms), "vision_ms": 5.0, "visual_tokens_kept": 20, "analytic_tflops": 2.0, "warmup": False}
        for ms in (10, 20, 30)
    ]
    tokens, efficiency = summarize(samples, [], wall_s=2.0)
    assert efficiency["prefill_ms"]["median"] == 20.0 and efficiency["prefill_ms"]["max"] == 30.0
    assert efficiency["vision_ms"]["mean"] == 5.0
    assert efficiency["analytic_tflops"]["mean"] == statistics.fmean([1.0, 2.0, 2.0, 2.0])
    assert tokens["visual_tokens_kept"]["mean"] == 17.5
    assert efficiency["warmup_samples"] == 1 and efficiency["samples"] == 4 and efficiency["samples_per_s"] == 2.0


def test_a_run_marks_only_its_first_batch_as_warmup(tmp_path, cache_dir):
    cfg = compose_run_config(
        ["compressor=globalcom2", "ratio=0.5", f"results_dir={tmp_path}", "suite.limit=3"], check=False
    )
    first_task, second_task = run(cfg)
    assert [s["warmup"] for s in first_task["samples"]].count(True) == cfg.suite.batch_size
    assert not any(s["warmup"] for s in second_task["samples"])
    assert first_task["efficiency"]["warmup_samples"] == cfg.suite.batch_size
    timed = sorted(s["prefill_ms"] for s in first_task["samples"] if not s["warmup"])
    assert first_task["efficiency"]["prefill_ms"]["median"] == statistics.median(timed)
    assert first_task["efficiency"]["peak_memory_mb"] is None
