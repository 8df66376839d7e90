"""LLM-stage compression inside the tiny LLaVA-NeXT (Llama) and LLaVA-OneVision (Qwen2, GQA) decoders."""

import numpy as np
import pytest
import torch
from PIL import Image

from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.hybrid import FastVGlobalCom2, SparseVLMGlobalCom2
from gc2bench.compressors.none import NoCompression
from gc2bench.compressors.pdrop import PDrop
from gc2bench.compressors.sparsevlm import SparseVLM

MAX_NEW = 5
METHODS = {  # (ratio, model) → compressor; the tiny LLMs have 4 layers, "auto" layers scale to them
    "fastv": lambda ratio, model: FastV(ratio, layer=2, decode="static"),
    "fastv_reselect": lambda ratio, model: FastV(ratio, layer=2),
    "fastv_layer1_2880": lambda ratio, model: FastV(ratio, layer=1, budget_of=2880, decode="static"),
    "pdrop": lambda ratio, model: PDrop(max(ratio, 0.3)),
    "sparsevlm": lambda ratio, model: SparseVLM(max(ratio, 0.3)),
    "sparsevlm_v1": lambda ratio, model: SparseVLM(max(ratio, 0.3), version="v1"),
    "fastv_globalcom2": lambda ratio, model: FastVGlobalCom2(ratio, **COSINE[model]),
    "sparsevlm_globalcom2": lambda ratio, model: SparseVLMGlobalCom2(max(ratio, 0.3), **COSINE[model]),
}
COSINE = {"next": {}, "onevision": {"score": "cosine"}}


def picture(height, width, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


TEXTS = ["Is there a cat?", "What color is it?", "How many?"]
IMAGES = [[picture(80, 120, 1)], [picture(60, 200, 2)], [picture(150, 150, 3)]]


@pytest.fixture(scope="module")
def build(cache_dir):
    from gc2bench.models.llava_next import LlavaNextAdapter
    from gc2bench.models.tiny import tiny_llava_next_path
    from gc2bench.models.tiny_onevision import load_tiny_onevision

    def make(model, compressor, attn="sdpa"):
        options = dict(dtype="float32", device="cpu", attn_implementation=attn)
        if model == "next":
            return LlavaNextAdapter(str(tiny_llava_next_path(0, cache_dir)), compressor, **options)
        return load_tiny_onevision(compressor, **options)

    return make


def run(adapter, texts=TEXTS, images=IMAGES, **kwargs):
    return adapter.generate(
        texts, images, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False, output_scores=True, **kwargs
    )


def assert_same(got, expected, atol=1e-5):
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.scores, e.scores, rtol=0, atol=atol)


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "sparsevlm_v1"])  # v1 always prunes one (n - 1)
def test_full_ratio_equals_no_compression(build, model, method):
    assert_same(run(build(model, METHODS[method](1.0, model))), run(build(model, NoCompression())))


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "fastv_reselect"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_kv_cache_generation_equals_recomputation_of_the_pruned_sequence(build, model, method, attn):
    adapter = build(model, METHODS[method](0.25, model), attn)
    cached = run(adapter)
    records = adapter.last_plan.records
    assert records and all(not bool(r.keep.all()) for r in records)
    recomputed = run(adapter, use_cache=False, prune_replay=records)
    assert_same(recomputed, cached, atol=1e-4)


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", list(METHODS))
def test_recomputed_attention_rows_equal_eager_attentions(build, model, method):
    adapter = build(model, METHODS[method](0.5, model), "eager")
    adapter.generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False)
    rows = adapter.last_plan.attention_rows[0]
    stage = adapter.pruner.stages[0]
    plain = build(model, NoCompression(), "eager")
    prompts = [plain.prompt(t, 1) for t in TEXTS]
    inputs = plain.processor(images=plain.processor_images(IMAGES), text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = plain.model(**inputs, output_attentions=True)
    queries = adapter.last_plan.query_rows[0].float()
    assert queries.sum() > 0
    per_query = out.attentions[stage.score_layer].mean(1).float()  # [B, Q=L, K=L]
    expected = (per_query * queries[:, :, None]).sum(1) / queries.sum(1, keepdim=True)
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", list(METHODS))
def test_batch_equals_one_at_a_time(build, model, method):
    adapter = build(model, METHODS[method](0.25, model))
    batched = run(adapter)
    single = [run(adapter, [t], [i])[0] for t, i in zip(TEXTS, IMAGES)]
    assert_same(batched, single, atol=1e-4)
    assert [b.stats.image_tokens_per_layer for b in batched] == [s.stats.image_tokens_per_layer for s in single]


@pytest.mark.parametrize("model", ["next", "onevision"])
@pytest.mark.parametrize("method", ["fastv", "fastv_layer1_2880", "pdrop", "sparsevlm"])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_kept_counts_per_layer_follow_the_schedule(build, model, method, ratio):
    compressor = METHODS[method](ratio, model)
    results = build(model, compressor).generate(TEXTS, IMAGES, max_new_tokens=1, do_sample=False)
    for result in results:
        stats = result.stats
        assert stats.image_tokens_per_layer == compressor.layer_counts(stats.visual_tokens_kept, 4)
        assert stats.layer_averaged_image_tokens == sum(stats.image_tokens_per_layer) / 4
    if method == "fastv":  # the formula, independently of layer_counts
        n = results[0].stats.visual_tokens_kept
        assert results[0].stats.image_tokens_per_layer == [n, n] + [min(n, round(ratio * n))] * 2


def authors_fastv_rule_without_cache(build, model, texts, images, generated, ratio, layer):
    """FastV's mask path (their ``modeling_llama.py``) recomputed without a KV cache, as an independent reference:
    prompt rows see the image tokens the last prompt token ranked at layer K−1; the row of each generated token
    those its own layer K−1 attention ranked; layers >= K hide the other image tokens as keys. Returns the logits
    [B, S, V] and each row's selection [B, S, S] (query q's visible image keys)."""
    plain = build(model, NoCompression(), "eager")
    prompts = [plain.prompt(t, 1) for t in texts]
    inputs = plain.processor(images=plain.processor_images(images), text=prompts, padding=True, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    fed = torch.tensor([g[:-1] for g in generated])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], fed], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(fed)], dim=1)
    image = inputs["input_ids"] == plain.model.config.image_token_id
    valid = inputs["attention_mask"].bool()
    batch, length = image.shape
    with torch.no_grad():
        rows = plain.model(**inputs, output_attentions=True).attentions[layer - 1].mean(1)  # [B, Q, K]
    counts = [min(int(n), round(ratio * int(n))) for n in image.sum(1)]
    visible = torch.zeros(batch, length, length, dtype=torch.bool)  # [B, Q, K]
    for b in range(batch):
        for q in range(length):
            source = max(q, prompt_len - 1)
            ranked = torch.sort(rows[b, source].masked_fill(~image[b], -torch.inf), descending=True, stable=True)
            visible[b, q, ranked.indices[: counts[b]]] = True
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & valid[:, None, :] & (~image[:, None, :] | visible)
    allowed |= torch.eye(length, dtype=torch.bool) & ~allowed.any(-1, keepdim=True)
    dtype = plain.model.dtype
    mask = torch.zeros(batch, 1, length, length, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)

    def masked(module, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}

    layers = plain.model.model.language_model.layers
    handles = [layers[i].register_forward_pre_hook(masked, with_kwargs=True) for i in range(layer, len(layers))]
    try:
        with torch.no_grad():
            logits = plain.model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits[:, prompt_len - 1 :], visible[:, prompt_len - 1 :]


@pytest.mark.parametrize("model", ["next", "onevision"])
def test_fastv_reselect_equals_the_authors_rule_recomputed_at_each_step(build, model):
    ratio, layer = 0.25, 2
    reselect = run(build(model, FastV(ratio, layer=layer, decode="reselect")))
    static = run(build(model, FastV(ratio, layer=layer, decode="static")))
    generated = [r.token_ids for r in reselect]
    logits, visible = authors_fastv_rule_without_cache(build, model, TEXTS, IMAGES, generated, ratio, layer)
    for row, result in enumerate(reselect):
        finite = torch.isfinite(result.scores)  # min_new_tokens sets EOS to -inf
        assert int((~finite).sum()) <= MAX_NEW
        torch.testing.assert_close(result.scores[finite], logits[row].float()[finite], rtol=0, atol=1e-4)
    # the rule re-ranks: some generated token sees other image tokens than the prompt did, so static differs
    assert bool((visible[:, 1:] != visible[:, :1]).any())
    torch.testing.assert_close(static[0].scores[0], reselect[0].scores[0], rtol=0, atol=1e-5)  # same prefill
    assert max(float((s.scores - r.scores).nan_to_num(0.0).abs().max()) for s, r in zip(static, reselect)) > 1e-3


def test_fastv_static_decode_is_unchanged_by_the_reselect_option(build):
    """decode=static is the pruned-cache path: its KV-cache generation equals the replayed recomputation."""
    adapter = build("next", FastV(0.25, layer=2, decode="static"))
    cached = run(adapter)
    assert_same(run(adapter, use_cache=False, prune_replay=adapter.last_plan.records), cached, atol=1e-4)
    assert (
        cached[0].stats.image_tokens_per_layer
        == run(build("next", FastV(0.25, layer=2)))[0].stats.image_tokens_per_layer
    )
