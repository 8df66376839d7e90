"""Every sample records the analytic LLM prefill cost of the tokens it actually used."""

import numpy as np
from PIL import Image

from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.none import NoCompression
from gc2bench.efficiency.flops import sample_tflops


def test_samples_record_analytic_tflops_of_their_own_tokens(tiny_adapter):
    image = Image.fromarray((np.random.RandomState(0).rand(80, 120, 3) * 255).astype("uint8"))
    original = tiny_adapter.compressor
    costs = {}
    try:
        for name, compressor in (("none", NoCompression()), ("globalcom2", GlobalCom2(0.25)), ("fastv", FastV(0.25))):
            tiny_adapter.compressor = compressor
            if name == "fastv":
                from gc2bench.models.llava_next import LlavaNextAdapter

                adapter = LlavaNextAdapter(tiny_adapter.path, compressor, dtype="float32", device="cpu")
            else:
                adapter = tiny_adapter
            stats = adapter.generate(["Is there a cat?"], [[image]], max_new_tokens=1, do_sample=False)[0].stats
            text = stats.llm_input_tokens - stats.visual_tokens_kept
            assert text > 0
            expected = sample_tflops(adapter.config, stats.visual_tokens_kept, text, stats.image_tokens_per_layer)
            assert stats.analytic_tflops == expected["tflops"] and stats.kv_cache_mb == expected["kv_cache_mb"]
            costs[name] = stats.analytic_tflops
    finally:
        tiny_adapter.compressor = original
    assert costs["globalcom2"] < costs["fastv"] < costs["none"]
