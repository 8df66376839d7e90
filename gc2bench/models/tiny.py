"""A tiny LLaVA-NeXT, built offline and deterministically from a seed.

CLIP vision tower (56-px crops, 14-px patches → 4×4 = 16 tokens per view, 3 layers), Llama
decoder (4 layers), AnyRes grid pinpoints in multiples of 56, ``image_newline``, a
byte-fallback BPE tokenizer and a Vicuna-style chat template. It is saved with
``save_pretrained`` and then loaded through the same ``from_pretrained`` path as real
checkpoints, so every test exercises the real loading code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

TINY_SPEC = {
    "crop_size": 56,
    "patch_size": 14,
    "grid_pinpoints": [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]],
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
    "builder_version": 3,
}

# Same layout as llava-hf/llava-v1.6-vicuna-*-hf's template: system line, "USER: <image>\n… ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endif %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# Random weights, but answers in words: the LM head is zeroed outside ANSWER_WORDS and </s>,
# and every answer word embeds to one large direction that the </s> row reads, so an answer
# is usually one word followed by </s>.
ANSWER_WORDS = ["▁yes", "▁no", "▁red", "▁blue", "▁one", "▁two"]
WORDS = [
    "yes",
    "no",
    "a",
    "the",
    "is",
    "there",
    "in",
    "image",
    "what",
    "color",
    "red",
    "green",
    "blue",
    "one",
    "two",
    "three",
    "cat",
    "dog",
    "USER",
    "ASSISTANT",
    "Answer",
    "question",
    "using",
    "single",
    "word",
    "or",
    "phrase",
]


def tiny_spec(text_layers: int | None = None) -> dict:
    """TINY_SPEC, with ``text_layers`` decoder layers if given (``model=tiny_deep``: LLaVA-NeXT-7B's 32)."""
    if text_layers is None:
        return TINY_SPEC
    if int(text_layers) < 1:
        raise ValueError(f"model.text_layers={text_layers} must be >= 1")
    return {**TINY_SPEC, "text": {**TINY_SPEC["text"], "num_hidden_layers": int(text_layers)}}


def spec_digest(spec: dict) -> str:
    """The first 10 hex digits of the spec's SHA-256 (part of the checkpoint's directory name)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    return Path(os.environ.get("GC2BENCH_CACHE", Path.home() / ".cache" / "gc2bench"))


def _build_tokenizer():
    from transformers import LlamaTokenizer

    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[token] = len(vocab)
    chars = sorted({c for w in WORDS for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789?.,:!'"))
    for c in ["▁"] + chars + ["▁" + c for c in chars]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        piece = "▁" + word[0]
        for c in word[1:]:
            merges.append((piece, c))
            piece += c
            vocab.setdefault(piece, len(vocab))
    merges = list(dict.fromkeys(merges))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_prefix_space=True, legacy=False)
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<image>"]})
    tokenizer.padding_side = "left"
    return tokenizer


def padded_vocab_size(tokenizer) -> int:
    """The tokenizer's size rounded up to a multiple of 64 (the embedding rows of a tiny model)."""
    return 64 * ((len(tokenizer) + 63) // 64)


def _make_answers_short(model, tokenizer) -> None:
    import torch

    word_ids = torch.tensor(tokenizer.convert_tokens_to_ids(ANSWER_WORDS))
    eos_id = tokenizer.convert_tokens_to_ids("</s>")
    with torch.no_grad():
        head = model.lm_head.weight
        direction = torch.randn(head.shape[1])
        direction /= direction.norm()
        head.copy_(torch.zeros_like(head).index_copy_(0, word_ids, 40 * head[word_ids]))
        head[eos_id] = 4 * direction
        embed = model.model.language_model.embed_tokens.weight
        embed[word_ids] += 30 * direction


def build_tiny_llava_next(path: str | Path, seed: int = 0, text_layers: int | None = None) -> Path:
    """Build the tiny LLaVA-NeXT with weights drawn from ``seed`` (and ``text_layers`` decoder layers,
    default TINY_SPEC's 4) and save it to ``path``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    spec = tiny_spec(text_layers)
    tokenizer = _build_tokenizer()
    vocab_size = padded_vocab_size(tokenizer)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=spec["crop_size"],
            patch_size=spec["patch_size"],
            projection_dim=spec["vision"]["hidden_size"],
            **spec["vision"],
        ),
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=False,
            **spec["text"],
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=spec["grid_pinpoints"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec["crop_size"]},
        crop_size={"height": spec["crop_size"], "width": spec["crop_size"]},
        image_grid_pinpoints=spec["grid_pinpoints"],
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return save_tiny_checkpoint(path, LlavaNextForConditionalGeneration, config, processor, seed)


def save_tiny_checkpoint(path: str | Path, model_class, config, processor, seed: int) -> Path:
    """A tiny model of ``model_class`` with weights drawn from ``seed`` (answers kept short, see ANSWER_WORDS)
    and the tokenizer's ids (bos 1, eos 2, pad 3), saved with its ``processor`` into ``path``."""
    import torch

    config.pad_token_id = 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        _make_answers_short(model, processor.tokenizer)
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def cached_build(name: str, build, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/<name>``, made by ``build(directory)`` on first use in a staging directory and renamed
    into place atomically (a concurrent builder that finishes first wins).

    Under torch.distributed, transformers' ``save_pretrained`` writes weights on rank 0 only, so
    the other ranks wait for rank 0's build instead of building.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / name
    if (target / "config.json").exists():
        return target
    if _distributed_rank() > 0:
        return _wait_for_build(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _wait_for_build(target: Path, timeout_s: float = 900.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while not (target / "config.json").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} was not built by rank 0 within {timeout_s:.0f} s")
        time.sleep(0.5)
    return target


def tiny_checkpoint_path(
    prefix: str, spec: dict, seed: int, builder, cache_dir: str | Path | None = None, build: bool = True
) -> Path:
    """``<cache>/<prefix>-<spec digest>-seed<seed>``, made by ``builder(directory, seed)`` on first use
    (``cached_build``: atomically); ``build=False``: only where it is."""
    name = f"{prefix}-{spec_digest(spec)}-seed{seed}"
    if not build:
        return (Path(cache_dir) if cache_dir else default_cache_dir()) / name
    return cached_build(name, lambda directory: builder(directory, seed), cache_dir)


def tiny_llava_next_path(
    seed: int = 0, cache_dir: str | Path | None = None, text_layers: int | None = None, build: bool = True
) -> Path:
    """Directory of the tiny model for ``seed`` (and ``text_layers``), building it on first use (``build=False``:
    only where it is)."""
    return tiny_checkpoint_path(
        "tiny-llava-next",
        tiny_spec(text_layers),
        seed,
        lambda directory, seed: build_tiny_llava_next(directory, seed, text_layers),
        cache_dir,
        build,
    )


def load_tiny_llava_next(
    compressor, seed: int = 0, name: str = "tiny", text_layers: int | None = None, **adapter_kwargs
):
    """The tiny model as a ``LlavaNextAdapter`` (built on first use, then ``from_pretrained``)."""
    from gc2bench.models.llava_next import LlavaNextAdapter

    return LlavaNextAdapter(
        str(tiny_llava_next_path(seed, text_layers=text_layers)), compressor, name=name, **adapter_kwargs
    )


# Where the checkpoint of a `model` config is, before it is built (gc2bench.results.identity).
load_tiny_llava_next.checkpoint_dir = lambda seed=0, text_layers=None, **_: tiny_llava_next_path(
    seed, text_layers=text_layers, build=False
)
