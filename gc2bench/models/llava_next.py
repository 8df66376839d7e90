"""LLaVA-NeXT (CLIP + Llama/Vicuna/Mistral) through transformers.

The adapter captures the CLS attention of one CLIP layer with a forward hook on that
layer's ``layer_norm1`` (its attention input x): q = q_proj(x_CLS), k = k_proj(x), per-head
q·kᵀ·scale, then (optionally) softmax, CLS column dropped, mean over heads. No eager
attention, no ``output_attentions``.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import ScoreRequest
from gc2bench.models.adapter import VisionStageAdapter


class LlavaNextAdapter(VisionStageAdapter):
    """A LLaVA-NeXT checkpoint (hub id or local path) plus a vision-stage compressor."""

    @property
    def model_class(self):
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    # -- vision stage -------------------------------------------------------------------------

    def layout(self, image_size_hw):
        from gc2bench.layout import layout_for

        return layout_for(self.config, tuple(int(v) for v in image_size_hw))

    def _vision_layer(self, index: int):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers[index]

    def encode_views(self, pixel_values: torch.Tensor, request: ScoreRequest):
        """Per-view projected features [V, N, D] and the requested per-view scores [V, N] (or None)."""
        captured = {}
        handle = None
        if request.kind in ("cls_logit", "cls_softmax"):
            norm = self._vision_layer(request.layer).layer_norm1
            handle = norm.register_forward_hook(lambda m, a, out: captured.__setitem__("x", out))
        try:
            outputs = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        finally:
            if handle is not None:
                handle.remove()
        selected = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.model.model.multi_modal_projector(selected)
        scores = None
        if request.kind in ("cls_logit", "cls_softmax"):
            scores = self._cls_scores(captured["x"], request)
        elif request.kind == "cosine":
            scores = -torch.nn.functional.cosine_similarity(selected, selected.mean(1, keepdim=True), dim=-1).float()
        return features, scores

    def _cls_scores(self, x: torch.Tensor, request: ScoreRequest) -> torch.Tensor:
        """Head-mean CLS attention of one CLIP layer from its normalised input x [V, 1+N, C] → [V, N]."""
        attn = self._vision_layer(request.layer).self_attn
        views, length, _ = x.shape
        q = attn.q_proj(x[:, :1]).view(views, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(views, length, attn.num_heads, attn.head_dim).transpose(1, 2)
        logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(-2) * attn.scale
        if request.kind == "cls_softmax":
            logits = logits.softmax(dim=-1)
        return logits[..., 1:].mean(dim=1)

