"""compressor=none through the adapter ≡ plain transformers generate on the same inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

MAX_NEW = 6


def image(width, height, seed):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def plain_generate(adapter, texts, images):
    prompts = [adapter.prompt(t, len(imgs)) for t, imgs in zip(texts, images)]
    flat = [img for imgs in images for img in imgs]
    inputs = adapter.processor(images=flat or None, text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = adapter.model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


def adapter_tokens(adapter, texts, images):
    results = adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)
    return [adapter.tokenizer(r.text, add_special_tokens=False).input_ids for r in results], results


def decoded(adapter, ids):
    return [adapter.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


CASES = {
    "one image": (["Is there a cat?"], [[image(120, 80, 0)]]),
    "batch of sizes": (
        ["Is there a cat?", "What color is it?", "How many?"],
        [[image(120, 80, 1)], [image(40, 200, 2)], [image(300, 300, 3)]],
    ),
    "two images in one prompt": (["Compare them."], [[image(90, 60, 4), image(50, 170, 5)]]),
    "text only": (["Say yes."], [[]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_compression_matches_plain_generate(tiny_adapter, case):
    texts, images = CASES[case]
    expected = plain_generate(tiny_adapter, texts, images)
    results = tiny_adapter.generate(texts, images, max_new_tokens=MAX_NEW, do_sample=False)
    assert [r.text for r in results] == decoded(tiny_adapter, expected)


def test_no_compression_logits_match_plain_forward(tiny_adapter):
    """Stronger than text equality: the prefill logits are identical."""
    texts, images = CASES["batch of sizes"]
    prompts = [tiny_adapter.prompt(t, 1) for t in texts]
    inputs = tiny_adapter.processor(images=[i[0] for i in images], text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_adapter.model(**inputs).logits
        stats = [None] * len(texts)
        from gc2bench.models.adapter import SampleStats

        stats = [SampleStats() for _ in texts]
        ids, mask, features = tiny_adapter._compress(inputs, images, stats)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        got = tiny_adapter.model(
            input_ids=ids,
            attention_mask=mask,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
        ).logits
    assert torch.equal(ids, inputs["input_ids"])
    torch.testing.assert_close(got[mask.bool()], expected[inputs["attention_mask"].bool()], rtol=0, atol=0)


def test_token_accounting_of_no_compression(tiny_adapter):
    texts, images = CASES["batch of sizes"]
    results = tiny_adapter.generate(texts, images, max_new_tokens=1, do_sample=False)
    for result, imgs in zip(results, images):
        layout = tiny_adapter.layout((imgs[0].height, imgs[0].width))
        stats = result.stats
        assert stats.visual_tokens_before == stats.visual_tokens_kept == len(layout.packed_sources)
        assert stats.newline_tokens_kept == stats.newline_tokens_before > 0
        assert sum(stats.kept_per_view[0]) + stats.newline_tokens_kept == stats.visual_tokens_kept
        assert stats.kept_per_view[0][0] == layout.tokens_per_view
