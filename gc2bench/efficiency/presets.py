"""Named model shapes, in one place.

``TEXT_PRESETS``: the LLM (decoder) of each model as transformers text-config keyword
arguments; ``gc2bench flops`` and the analytic FLOPs of ``bench prefill`` read them.
``LLAVA_NEXT_PRESETS`` / ``LLAVA_ONEVISION_PRESETS``: whole LLaVA-NeXT / LLaVA-OneVision models
(vision tower, crops, AnyRes grid, LLM) that ``gc2bench bench prefill`` builds with random weights.
Real checkpoints: Vicuna-7B/13B are llava-hf/llava-v1.6-vicuna-{7b,13b}-hf's ``text_config``;
OneVision-7B is llava-hf/llava-onevision-qwen2-7b-ov-hf's Qwen2 (GQA: 28 query heads, 4 key/value
heads) behind SigLIP-so400m (384-px crops, 14-px patches, 26 layers: the checkpoint drops the 27th)
with 6×6 grid pinpoints in multiples of 384 and ``anyres_max_9`` (the defaults of transformers'
``LlavaOnevisionConfig``, which are that checkpoint's).
"""

from __future__ import annotations

TEXT_PRESETS: dict[str, dict] = {
    "llava_next_7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llava_next_13b": {
        "model_type": "llama",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "llava_onevision_7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    },
    # Scaled-down Llama for CPU benchmarks: Vicuna's 2.69 MLP ratio and head_dim 128 kept.
    "cpu_small": {
        "model_type": "llama",
        "hidden_size": 1024,
        "intermediate_size": 2752,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
    },
    # Scaled-down Qwen2 for CPU benchmarks: OneVision-7B's head_dim 128, 7:1 GQA and 5.29 MLP ratio kept,
    # about cpu_small's FLOPs per token.
    "cpu_small_onevision": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4736,
        "num_hidden_layers": 8,
        "num_attention_heads": 7,
        "num_key_value_heads": 1,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
    },
    # gc2bench.models.tiny's decoder.
    "tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
    },
    # gc2bench.models.tiny_onevision's decoder (GQA: 4 query heads, 2 key/value heads).
    "tiny_onevision": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
    },
}

LLAVA_NEXT_GRID = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "projection_dim": 768,
}


def _scaled_grid(crop: int) -> list[list[int]]:
    return [[h * crop // 336, w * crop // 336] for h, w in LLAVA_NEXT_GRID]


# crop_size/patch_size: one view is (crop/patch)² tokens. The benchmark image fills the largest grid
# (2×2 crops + thumbnail = 5 views: LLaVA-NeXT's 2880 patch tokens at full scale).
LLAVA_NEXT_PRESETS: dict[str, dict] = {
    "llava_next_7b": {
        "text": "llava_next_7b",
        "vision": CLIP_L_336,
        "crop_size": 336,
        "patch_size": 14,
        "grid_pinpoints": LLAVA_NEXT_GRID,
    },
    "llava_next_13b": {
        "text": "llava_next_13b",
        "vision": CLIP_L_336,
        "crop_size": 336,
        "patch_size": 14,
        "grid_pinpoints": LLAVA_NEXT_GRID,
    },
    # 168-px crops: 144 tokens/view, 720 patch tokens + 24 newlines (1/4 of the 7B's); a 2-layer CLIP so the
    # LLM dominates prefill.
    "cpu_small": {
        "text": "cpu_small",
        "vision": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 256,
        },
        "crop_size": 168,
        "patch_size": 14,
        "grid_pinpoints": _scaled_grid(168),
    },
    "tiny": {
        "text": "tiny",
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
        "crop_size": 56,
        "patch_size": 14,
        "grid_pinpoints": _scaled_grid(56),
    },
}


SIGLIP_SO400M_384 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26, "num_attention_heads": 16}


def _onevision_grid(crop: int) -> list[list[int]]:
    """OneVision's grid pinpoints: 1..6 × 1..6 crops of ``crop`` px."""
    return [[crop * rows, crop * cols] for rows in range(1, 7) for cols in range(1, 7)]


# One view is (crop/patch)² tokens; anyres_max_9 downsamples a packed crop grid of more than 9 views' tokens.
# The benchmark image is 3×3 crops (the most tokens, fewest views): 10 views, base view + 9 crops' tokens +
# one newline per grid row (7B: 729 + 6561 + 81 = 7371 visual tokens).
LLAVA_ONEVISION_PRESETS: dict[str, dict] = {
    "llava_onevision_7b": {
        "text": "llava_onevision_7b",
        "vision": SIGLIP_SO400M_384,
        "crop_size": 384,
        "patch_size": 14,
        "grid_pinpoints": _onevision_grid(384),
        "vision_aspect_ratio": "anyres_max_9",
    },
    # 168-px crops: 144 tokens/view, 144 + 1296 + 36 newlines = 1476 visual tokens (1/5 of the 7B's); a 2-layer
    # SigLIP so the LLM dominates prefill.
    "cpu_small_onevision": {
        "text": "cpu_small_onevision",
        "vision": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4},
        "crop_size": 168,
        "patch_size": 14,
        "grid_pinpoints": _onevision_grid(168),
        "vision_aspect_ratio": "anyres_max_9",
    },
    # gc2bench.models.tiny_onevision's shapes (TINY_ONEVISION_SPEC).
    "tiny_onevision": {
        "text": "tiny_onevision",
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        "crop_size": 56,
        "patch_size": 14,
        "grid_pinpoints": _onevision_grid(56),
        "vision_aspect_ratio": "anyres_max_9",
    },
}
