"""A tiny LLaVA-OneVision, built offline and deterministically from a seed.

SigLIP vision tower without CLS (56-px crops, 14-px patches → 4×4 = 16 tokens per view, 3
layers), Qwen2 decoder with GQA (4 query heads, 2 key/value heads, 4 layers),
``vision_feature_layer=-1``, ``vision_feature_select_strategy="full"``,
``vision_aspect_ratio="anyres_max_9"``, ``image_newline``, and grid pinpoints in multiples of
56 up to 6×6 crops like the real model's 384-px grid, so large images really are downsampled.
The tokenizer is the tiny LLaVA-NeXT's (``gc2bench.models.tiny``) plus the Qwen2 chat tokens,
under a Qwen2-style chat template. Saved with ``save_pretrained``, loaded with
``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

from gc2bench.models.onevision import image_only_processor_class
from gc2bench.models.tiny import _build_tokenizer, padded_vocab_size, save_tiny_checkpoint, tiny_checkpoint_path

CROP = 56
TINY_ONEVISION_SPEC = {
    "crop_size": CROP,
    "patch_size": 14,
    "grid_pinpoints": [[CROP * rows, CROP * cols] for rows in range(1, 7) for cols in range(1, 7)],
    "vision_aspect_ratio": "anyres_max_9",
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    },
    "builder_version": 1,
}

CHAT_TOKENS = ["<image>", "<video>", "<|im_start|>", "<|im_end|>"]
# Layout of llava-hf/llava-onevision-qwen2-*-ov-hf's template: images first, then "\n" + text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + item['text'] }}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _build_tokenizer_onevision():
    tokenizer = _build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    return tokenizer


def build_tiny_onevision(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny LLaVA-OneVision with weights drawn from ``seed`` and save it to ``path``."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    spec = TINY_ONEVISION_SPEC
    tokenizer = _build_tokenizer_onevision()
    vocab_size = padded_vocab_size(tokenizer)
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            image_size=spec["crop_size"], patch_size=spec["patch_size"], vision_use_head=False, **spec["vision"]
        ),
        text_config=Qwen2Config(
            vocab_size=vocab_size,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=False,
            **spec["text"],
        ),
        image_token_index=image_id,
        video_token_index=video_id,
        image_grid_pinpoints=spec["grid_pinpoints"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=spec["vision_aspect_ratio"],
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": spec["crop_size"], "width": spec["crop_size"]},
        image_grid_pinpoints=spec["grid_pinpoints"],
    )
    processor = image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(spec["crop_size"] // spec["patch_size"]) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=spec["vision_aspect_ratio"],
        chat_template=CHAT_TEMPLATE,
    )
    return save_tiny_checkpoint(path, LlavaOnevisionForConditionalGeneration, config, processor, seed)


def tiny_onevision_path(seed: int = 0, cache_dir: str | Path | None = None, build: bool = True) -> Path:
    """Directory of the tiny OneVision for ``seed``, building it on first use (``build=False``: only where it is)."""
    return tiny_checkpoint_path(
        "tiny-llava-onevision", TINY_ONEVISION_SPEC, seed, build_tiny_onevision, cache_dir, build
    )


def load_tiny_onevision(compressor, seed: int = 0, name: str = "tiny_onevision", **adapter_kwargs):
    """The tiny OneVision as a ``LlavaOneVisionAdapter`` (built on first use, then ``from_pretrained``)."""
    from gc2bench.models.onevision import LlavaOneVisionAdapter

    return LlavaOneVisionAdapter(str(tiny_onevision_path(seed)), compressor, name=name, **adapter_kwargs)


load_tiny_onevision.checkpoint_dir = lambda seed=0, **_: tiny_onevision_path(seed, build=False)
