"""LLaVA-NeXT (CLIP + Llama/Vicuna/Mistral) through transformers.

The adapter captures the CLS attention of one CLIP layer with a forward hook on that
layer's ``layer_norm1`` (its attention input x): q = q_proj(x_CLS), k = k_proj(x), per-head
q·kᵀ·scale, then (optionally) softmax, CLS column dropped, mean over heads. No eager
attention, no ``output_attentions``. ``cls_softmax_fullwidth`` instead takes one softmax of
q·kᵀ/√C over the full C-wide projections (the LLaVA-PruMerge code). For merging compressors
(``ScoreRequest.merge_inputs``) the same hook also gives that layer's keys k_proj(x).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch

from gc2bench.compressors.base import FEATURE_SCORES, ScoreKind, ScoreRequest
from gc2bench.layout import PIPELINES, layout_for, pipeline_pinpoints_hw
from gc2bench.models.adapter import VisionStageAdapter, feature_scores


def clip_encoder_layers(tower) -> torch.nn.ModuleList:
    """The encoder layers of a CLIP vision tower (with or without a ``vision_model`` wrapper)."""
    return getattr(tower, "vision_model", tower).encoder.layers


@contextmanager
def captured_attention_input(encoder_layer):
    """Within the block, ``captured["x"]`` is the last input [V, 1+N, C] to the layer's self-attention."""
    captured = {}
    handle = encoder_layer.layer_norm1.register_forward_hook(lambda m, a, out: captured.__setitem__("x", out))
    try:
        yield captured
    finally:
        handle.remove()


def cls_attention_scores(attention, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Head-mean CLS attention of a CLIP self-attention module from its input x [V, 1+N, C] → [V, N].

    kind: ``cls_logit`` (pre-softmax q·k·scale) or ``cls_softmax`` (softmax over all 1+N keys);
    the CLS column is dropped after the softmax. Computed in float32.
    """
    views, length, _ = x.shape
    q = attention.q_proj(x[:, :1]).view(views, 1, attention.num_heads, attention.head_dim).transpose(1, 2)
    k = attention.k_proj(x).view(views, length, attention.num_heads, attention.head_dim).transpose(1, 2)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(-2) * attention.scale
    if kind == "cls_softmax":
        logits = logits.softmax(dim=-1)
    return logits[..., 1:].mean(dim=1)


def cls_attention_fullwidth(attention, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """CLS attention with all heads as one head: softmax over the 1+N keys of q·kᵀ/√C, CLS column dropped.

    x: [V, 1+N, C] attention input; keys: [V, 1+N, C] = k_proj(x). Returns [V, N] float32. This is
    the attention of LLaVA-PruMerge's ``token_prune_merge_advanced`` (hooks on q_proj / k_proj,
    ``(q @ kᵀ) * C ** -0.5``, softmax), equal to softmax(√H · head-mean logits).
    """
    q = attention.q_proj(x[:, :1]).float()
    logits = (q @ keys.float().transpose(-1, -2)).squeeze(-2) * keys.shape[-1] ** -0.5
    return logits.softmax(dim=-1)[:, 1:]


class LlavaNextAdapter(VisionStageAdapter):
    """A LLaVA-NeXT checkpoint (hub id or local path) plus a vision-stage compressor.

    ``pipeline``: ``transformers`` (the llava-hf processor and packing) or ``llava`` (the original LLaVA
    code's AnyRes rules: pinpoints read as (width, height), unpadding by ``int()``). For ``llava`` the
    processor is given the pinpoints swapped, so that it cuts the crops of LLaVA's grid, and the packing
    (``layout``, ``pack``) follows LLaVA's unpadding; transformers itself is not patched.
    """

    pipelines = PIPELINES

    @property
    def model_class(self):
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    # -- vision stage -------------------------------------------------------------------------

    def load_processor(self, path: str, revision: str | None):
        processor = super().load_processor(path, revision)
        image_processor = processor.image_processor
        image_processor.image_grid_pinpoints = pipeline_pinpoints_hw(
            image_processor.image_grid_pinpoints, self.pipeline
        )
        return processor

    def layout(self, image_size_hw):
        return layout_for(self.config, tuple(int(v) for v in image_size_hw), self.pipeline)

    def processor_token_count(self, layout) -> int:
        """The processor counts placeholders with transformers' unpadding, on the grid it was given."""
        return len(dataclasses.replace(layout, unpad="transformers").packed_sources)

    def _vision_layer(self, index: int):
        return clip_encoder_layers(self.model.model.vision_tower)[index]

    def encode_views(self, pixel_values: torch.Tensor, request: ScoreRequest):
        """Per-view projected features [V, N, D] and the requested per-view scores [V, N] (or None)."""
        features, scores, _, _ = self._encode(pixel_values, request, with_merge_inputs=False)
        return features, scores

    def encode_views_for_merging(self, pixel_values: torch.Tensor, request: ScoreRequest, layouts: list):
        """(None, scores [V, N], keys [V, N, C], projector inputs [V, N, C]) over all V views: the keys of
        ``request.layer`` (k_proj of its attention input, CLS row dropped), the projector inputs
        ``hidden_states[vision_feature_layer]`` (CLS dropped). No projected features: a merging
        compressor supplies every emitted token's projector input. ``layouts`` is not needed here."""
        return self._encode(pixel_values, request, with_merge_inputs=True)

    def _encode(self, pixel_values: torch.Tensor, request: ScoreRequest, with_merge_inputs: bool):
        layer = self._vision_layer(request.layer)
        with captured_attention_input(layer) as captured:
            outputs = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        selected = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = None if with_merge_inputs else self.model.model.multi_modal_projector(selected)
        needs_keys = with_merge_inputs or request.kind == ScoreKind.CLS_SOFTMAX_FULLWIDTH
        keys = layer.self_attn.k_proj(captured["x"]) if needs_keys else None
        if request.kind in (ScoreKind.CLS_LOGIT, ScoreKind.CLS_SOFTMAX):
            scores = cls_attention_scores(layer.self_attn, captured["x"], request.kind)
        elif request.kind == ScoreKind.CLS_SOFTMAX_FULLWIDTH:
            scores = cls_attention_fullwidth(layer.self_attn, captured["x"], keys)
        elif request.kind in FEATURE_SCORES:
            scores = feature_scores(request.kind, selected)  # cosine in the model dtype (OneVision: float32)
        else:
            scores = None  # ScoreKind.NONE
        if not with_merge_inputs:
            return features, scores, None, None
        return features, scores, keys[:, 1:], selected
