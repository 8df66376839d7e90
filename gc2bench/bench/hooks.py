"""`gc2bench bench hooks`: what capturing CLS attention costs next to the vision tower itself.

A CLIP vision tower with random weights (default: CLIP-L/336, the LLaVA-NeXT tower) runs on
random views, as the LLaVA-NeXT adapter runs it (``output_hidden_states=True``): once plain,
once with the adapter's hook on the last layer's ``layer_norm1`` plus the CLS score
computation. Medians over repeats, warm-up excluded; the overhead is reported against the
plain tower's median time.
"""

from __future__ import annotations

import statistics
import sys

import torch
from tqdm import tqdm

from gc2bench.efficiency.timing import now
from gc2bench.models.llava_next import captured_attention_input, clip_encoder_layers, cls_attention_scores


def bench_hooks(
    views: int = 1,
    layers: int = 24,
    width: int = 1024,
    heads: int = 16,
    image_size: int = 336,
    repeats: int = 5,
    device: str = "cpu",
    dtype: str = "float32",
) -> int:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from gc2bench.models.adapter import DTYPES

    print(f"bench hooks: building a random CLIP tower ({layers} layers, width {width})", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=14,
    )
    tower = CLIPVisionModel(config).to(device, DTYPES[dtype]).eval()
    pixels = torch.randn(views, 3, image_size, image_size, device=device, dtype=DTYPES[dtype])
    layer = clip_encoder_layers(tower)[-1]

    def plain():
        tower(pixels, output_hidden_states=True)

    def hooked():
        with captured_attention_input(layer) as captured:
            tower(pixels, output_hidden_states=True)
        cls_attention_scores(layer.self_attn, captured["x"], "cls_logit")

    with captured_attention_input(layer) as captured:
        tower(pixels, output_hidden_states=True)
    x = captured["x"]

    def scores_only():
        cls_attention_scores(layer.self_attn, x, "cls_logit")

    timings = {name: [] for name in ("plain", "hooked", "scores")}
    with torch.no_grad():
        rounds = tqdm(
            range(repeats + 1),
            desc="bench hooks (round 0 = warm-up)",
            unit="round",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for step in rounds:
            for name, fn in (("plain", plain), ("hooked", hooked), ("scores", scores_only)):
                start = now(device)
                fn()
                if step:  # the first round is warm-up
                    timings[name].append(now(device) - start)
    plain_ms, hooked_ms, scores_ms = (1e3 * statistics.median(timings[k]) for k in ("plain", "hooked", "scores"))
    print(
        f"CLIP tower: {layers} layers, width {width}, {image_size}px, {views} view(s), {dtype} on {device}; "
        f"median of {repeats}"
    )
    print(f"tower alone            {plain_ms:10.2f} ms")
    print(f"tower + hook + scores  {hooked_ms:10.2f} ms  ({100 * (hooked_ms - plain_ms) / plain_ms:+.2f}%, noisy)")
    print(f"score computation      {scores_ms:10.3f} ms  ({100 * scores_ms / plain_ms:.3f}% of the tower)")
    return 0
