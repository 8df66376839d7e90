"""Analytic LLM prefill FLOPs and KV-cache size of a decoder-only transformer.

Per decoder layer with T tokens (d = hidden size, m = MLP intermediate size, d_q = query heads ×
head_dim, d_kv = key/value heads × head_dim; one multiply-add = 2 FLOPs):

    FLOPs_layer(T) = 4·T·d·d_q      q and o projections
                   + 4·T·d·d_kv     k and v projections
                   + 4·T²·d_q       Q·Kᵀ and attention·V over the full T×T square (no causal halving)
                   + 6·T·d·m        gate, up and down projections (SwiGLU)

With multi-head attention (d_kv = d_q = d) this is the papers' 8Td² + 4T²d + 6Tdm (TCSVT §III-D,
Tables V/VI); the paper formula assumes MHA. Under grouped-query attention (Qwen2 in
LLaVA-OneVision: 28 query heads, 4 key/value heads) the k/v projections shrink to 4·T·d·d_kv
while the attention products still run over every query head (K and V are repeated), so they
stay 4·T²·d_q. Not counted: embeddings, norms, rotary, softmax, activations, residual adds,
biases, the LM head. The prefill is the sum over layers; an LLM-stage method (FastV, PDrop,
SparseVLM) gives each layer its own T_l, so FLOPs = Σ_l FLOPs_layer(T_l).

KV cache after prefill: Σ_l 2 (K and V) · T_l · d_kv · bytes per element; MB = 10⁶ bytes.

Paper convention (TCSVT Tables V/VI, LLaVA-NeXT-7B/13B): T = visual tokens only (text and system
tokens left out), TFLOPs = 10¹² FLOPs, KV cache in fp16 (2 bytes), K and V of all layers, MB =
10⁶ bytes. Their rows ≥ 1 GB (7B: R = 1, 0.75; 13B: R = 1, 0.75, 0.5) read as LLM-Viewer's GB
figure rounded to one decimal and multiplied by 1024 (1.51 GB → "1536 MB", 2.36 GB → "2457.6 MB"),
hence gaps of up to 4.0 % (1.7 % and 0.5 % for the 7B); the other rows agree to 0.2 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gc2bench.efficiency.presets import TEXT_PRESETS
from gc2bench.errors import ConfigError

TERA = 1e12
MEGA = 1e6


SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder that FLOPs and KV cache depend on."""

    hidden_size: int  # d
    intermediate_size: int  # m
    num_layers: int  # L
    num_heads: int
    num_kv_heads: int
    head_dim: int
    name: str = ""

    def sizes(self) -> dict:
        """The six sizes by name (the JSON of ``gc2bench flops`` and ``bench prefill``)."""
        return {field: getattr(self, field) for field in SIZE_FIELDS}

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def linear_flops_per_token(self) -> int:
        """FLOPs per token per layer that grow linearly in T: 4·d·d_q + 4·d·d_kv + 6·d·m."""
        d = self.hidden_size
        return 4 * d * self.q_dim + 4 * d * self.kv_dim + 6 * d * self.intermediate_size

    @classmethod
    def from_config(cls, config, name: str = "") -> DecoderShape:
        """From a transformers text config, or a multimodal config (its ``text_config`` is used)."""
        text = getattr(config, "text_config", None) or config
        heads = int(text.num_attention_heads)
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            int(text.hidden_size),
            int(text.intermediate_size),
            int(text.num_hidden_layers),
            heads,
            int(kv_heads),
            int(head_dim),
            name or getattr(config, "_name_or_path", "") or "",
        )


def text_config(model: str | Path):
    """The transformers text config of a preset name (``TEXT_PRESETS``) or of a local checkpoint/config
    directory (read with ``AutoConfig``; a multimodal config gives its ``text_config``)."""
    from transformers import AutoConfig

    if isinstance(model, str) and model in TEXT_PRESETS:
        kwargs = dict(TEXT_PRESETS[model])
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    path = Path(str(model)).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model={model!s}: not a preset ({', '.join(TEXT_PRESETS)}) nor a directory with a config.json"
        )
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"model={model!s}: cannot read {path / 'config.json'} ({error})") from None
    return getattr(config, "text_config", None) or config


def decoder_shape(model) -> DecoderShape:
    """``model``: a DecoderShape, a transformers config, a preset name or a checkpoint/config directory."""
    if isinstance(model, DecoderShape):
        return model
    if isinstance(model, (str, Path)):
        shape = DecoderShape.from_config(text_config(model), name=str(model))
    else:
        shape = DecoderShape.from_config(model)
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
        if getattr(shape, field) < 1:
            raise ConfigError(f"model={model!s}: {field}={getattr(shape, field)} must be >= 1")
    return shape


def _count(value, what: str) -> int:
    try:
        whole = not isinstance(value, bool) and float(value).is_integer() and float(value) >= 0
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ConfigError(f"{what}={value!r} must be a whole number >= 0")
    return int(value)


def tokens_per_layer(
    shape: DecoderShape, visual_tokens: int, text_tokens: int = 0, image_tokens_per_layer: Sequence[int] | None = None
) -> list[int]:
    """[L] tokens entering each layer: image tokens (``visual_tokens`` at every layer, or the per-layer
    counts of an LLM-stage method, which then take precedence) plus ``text_tokens``."""
    text = _count(text_tokens, "text_tokens")
    if image_tokens_per_layer is None:
        return [_count(visual_tokens, "visual_tokens") + text] * shape.num_layers
    if len(image_tokens_per_layer) != shape.num_layers:
        raise ConfigError(
            f"image_tokens_per_layer has {len(image_tokens_per_layer)} entries but the model "
            f"has {shape.num_layers} layers"
        )
    return [_count(n, f"image_tokens_per_layer[{i}]") + text for i, n in enumerate(image_tokens_per_layer)]


def prefill_flops(shape: DecoderShape, layer_tokens: Sequence[int]) -> int:
    """FLOPs of one prefill whose layer l runs on ``layer_tokens[l]`` tokens (module docstring)."""
    total, squares = sum(layer_tokens), sum(t * t for t in layer_tokens)
    return shape.linear_flops_per_token * total + 4 * shape.q_dim * squares


def kv_cache_bytes(shape: DecoderShape, layer_tokens: Sequence[int], bytes_per_element: int = 2) -> int:
    """Bytes of K and V kept after prefill: Σ_l 2·T_l·d_kv·bytes_per_element (fp16/bf16: 2)."""
    return 2 * shape.kv_dim * bytes_per_element * sum(layer_tokens)


def sample_tflops(
    text_config,
    visual_tokens: int,
    text_tokens: int = 0,
    image_tokens_per_layer: Sequence[int] | None = None,
    bytes_per_element: int = 2,
) -> dict:
    """Analytic cost of one sample's prefill: ``{"tflops": 10¹² FLOPs, "kv_cache_mb": 10⁶ bytes}``.

    ``text_config``: transformers config (text or multimodal), preset name, directory or DecoderShape;
    ``visual_tokens``: image tokens entering the LLM (newlines included); ``image_tokens_per_layer``:
    for LLM-stage methods, the image tokens entering each layer (``SampleStats.image_tokens_per_layer``).
    """
    shape = decoder_shape(text_config)
    layers = tokens_per_layer(shape, visual_tokens, text_tokens, image_tokens_per_layer)
    return {
        "tflops": prefill_flops(shape, layers) / TERA,
        "kv_cache_mb": kv_cache_bytes(shape, layers, bytes_per_element) / MEGA,
    }


def flops_report(model: str, visual_tokens: int, text_tokens: int = 0, bytes_per_element: int = 2) -> dict:
    """What ``gc2bench flops`` prints, as a dict."""
    shape = decoder_shape(model)
    cost = sample_tflops(shape, visual_tokens, text_tokens, bytes_per_element=bytes_per_element)
    return {
        "model": str(model),
        "visual_tokens": int(visual_tokens),
        "text_tokens": int(text_tokens),
        "tflops": cost["tflops"],
        "kv_cache_mb": cost["kv_cache_mb"],
        "bytes_per_element": bytes_per_element,
        "decoder": shape.sizes(),
    }


def print_flops(
    model: str, visual_tokens: int, text_tokens: int = 0, as_json: bool = False, bytes_per_element: int = 2
) -> int:
    import json

    report = flops_report(model, visual_tokens, text_tokens, bytes_per_element)
    if as_json:
        print(json.dumps(report))
        return 0
    dec = report["decoder"]
    gqa = f", GQA {dec['num_heads']}/{dec['num_kv_heads']} heads" if dec["num_kv_heads"] != dec["num_heads"] else ""
    print(
        f"{report['model']}: d={dec['hidden_size']} m={dec['intermediate_size']} L={dec['num_layers']} "
        f"heads={dec['num_heads']} head_dim={dec['head_dim']}{gqa}"
    )
    print(f"tokens        {visual_tokens} visual + {text_tokens} text")
    print(f"prefill       {report['tflops']:.2f} TFLOPs")
    print(
        f"KV cache      {report['kv_cache_mb']:.1f} MB ({8 * bytes_per_element}-bit K and V, all layers, "
        f"MB = 10^6 bytes)"
    )
    return 0
