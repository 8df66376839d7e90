"""LLaVA-OneVision (SigLIP + Qwen2) through transformers.

Token table: views follow ``gc2bench.layout.OneVisionLayout``. View 0 is the base image (the
thumbnail); views 1..C are *virtual crop views*: slot p of view 1+j holds the packed-grid token
(after the ``anyres_max_n`` bilinear downsampling of the unpadded grid) whose sampling centre
lies in patch p of crop j. Without downsampling a slot holds the crop's own patch feature, as in
LLaVA-NeXT. ``pack`` builds the packed grid with the same operations as transformers'
``pack_image_features`` (so ``compressor=none`` feeds the LLM exactly transformers' features) and
gathers the emitted tokens from it.

Scores: SigLIP has no CLS token, so only the scores that need the features alone are served
(``FEATURE_SCORES``, ``gc2bench.models.adapter.feature_scores``): ``cosine`` = −cos(x_i, mean_j x_j) over
each view's N patch features and ``norm`` = ‖x_i‖₂, where x = the vision tower's
``hidden_states[vision_feature_layer]`` (the projector's input, i.e. the vision tokens "after
vision encoding" of the AAAI paper §4.3), in float32. Scores are per vision-tower patch;
slot p of a virtual crop view is scored by the patch it sits on (GlobalCom² resamples crop
scores onto the packed grid itself, see ``gc2bench.compressors.globalcom2``). A compressor that
asks for a CLS score is rejected when the adapter is built.

Images of a prompt with several images get the base view only (transformers' ``batch_num_images``)
when the processor is given nested image lists; ``layouts(inputs)`` reads that from the processor
output.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from gc2bench.compressors.base import CLS_SCORES, FEATURE_SCORES, ScoreKind, ScoreRequest, gather_tokens
from gc2bench.config import ConfigError
from gc2bench.layout import NEWLINE
from gc2bench.models.adapter import VisionStageAdapter, feature_scores


@cache
def image_only_processor_class():
    """``LlavaOnevisionProcessor`` without its video processor (which needs torchvision, absent on CPU machines).

    Images and text are processed by transformers' own code; ``from_pretrained`` reads a standard
    OneVision checkpoint (its video processor config is ignored) and ``save_pretrained`` writes one.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    class LlavaOnevisionProcessorWithoutVideo(LlavaOnevisionProcessor):
        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            image_token="<image>",
            video_token="<video>",
            vision_aspect_ratio="anyres_max_9",
            **kwargs,
        ):
            # Same attributes as LlavaOnevisionProcessor.__init__ (transformers 5.x), minus video_processor.
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token = getattr(tokenizer, "image_token", image_token)
            self.video_token = getattr(tokenizer, "video_token", video_token)
            self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.image_token
            )
            self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.video_token
            )
            self.vision_aspect_ratio = vision_aspect_ratio
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def to_dict(self):
            return {**super().to_dict(), "processor_class": "LlavaOnevisionProcessor"}

    return LlavaOnevisionProcessorWithoutVideo


class LlavaOneVisionAdapter(VisionStageAdapter):
    """A LLaVA-OneVision checkpoint (hub id or local path) plus a vision-stage compressor."""

    score_kinds = frozenset(ScoreKind).difference(CLS_SCORES)
    missing_scores = (
        "(LLaVA-OneVision, SigLIP vision tower) has no CLS token; add compressor.score=cosine (the AAAI "
        "GlobalCom² paper's §4.3 score, accepted by the compressors with a `score` option)"
    )

    def check_compressor(self, compressor, model_name: str) -> None:
        super().check_compressor(compressor, model_name)
        if compressor.unpad is False:  # fastervlm, random, prumerge: the padded-grid conventions
            raise ConfigError(
                f"compressor {compressor.name!r}: unpad=false (all padded-grid patches) does not apply "
                f"to model {model_name!r} (LLaVA-OneVision packs a downsampled grid); use "
                "compressor.unpad=true"
            )

    def load_processor(self, path: str, revision: str | None):
        """The checkpoint's image + text processor (transformers' OneVision processing, no video processor)."""
        return image_only_processor_class().from_pretrained(path, revision=revision)

    @property
    def model_class(self):
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    # -- vision stage -------------------------------------------------------------------------

    def layout(self, image_size_hw, anyres: bool = True):
        """OneVisionLayout of an image (height, width); ``anyres=False``: base view only."""
        from gc2bench.layout import onevision_layout

        return onevision_layout(self.config, tuple(int(v) for v in image_size_hw), anyres)

    def processor_images(self, images: list[list]):
        """Nested per-prompt lists: a prompt with several images gets base views only, as in transformers."""
        return [group for group in images if group] or None

    def layouts(self, inputs) -> list:
        """Layouts of every image of a processor output, in order (base view only for multi-image prompts)."""
        sizes = inputs["image_sizes"].tolist()
        counts = inputs.get("batch_num_images")
        counts = counts.tolist() if counts is not None else [1] * len(sizes)
        anyres = [n == 1 for n in counts for _ in range(n)]  # transformers get_image_features: need_patching
        return [self.layout(size, flag) for size, flag in zip(sizes, anyres)]

    def encode_views(self, pixel_values: torch.Tensor, request: ScoreRequest):
        """Per-view projected features [V, N, D] and, for ``cosine``, per-view scores [V, N] (float32)."""
        features, scores, _ = self._encode(pixel_values, request)
        return features, scores

    def _encode(self, pixel_values: torch.Tensor, request: ScoreRequest, project: bool = True):
        """(projected features [V, N, D], or None without ``project``; scores [V, N] or None; projector
        inputs [V, N, C])."""
        outputs = self.model.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        layer = self.config.vision_feature_layer
        if isinstance(layer, int):
            selected = outputs.hidden_states[layer]
        else:
            selected = torch.cat([outputs.hidden_states[i] for i in layer], dim=-1)
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.model.model.multi_modal_projector(selected) if project else None
        if request.kind in FEATURE_SCORES:
            scores = feature_scores(request.kind, selected.float())
        elif request.kind == ScoreKind.NONE:
            scores = None
        else:
            raise ConfigError(f"model {self.name!r} {self.missing_scores} (asked for a {request.kind} score)")
        return features, scores, selected

    def encode_views_for_merging(self, pixel_values: torch.Tensor, request: ScoreRequest, layouts: list):
        """(None, scores [V, N], keys [V, N, C], projector inputs [V, N, C] per slot) over all V views.

        Keys: k_proj of ``request.layer``'s attention input (SigLIP, no CLS), of the patch a slot sits on
        (as its score). Projector inputs: ``hidden_states[vision_feature_layer]``; for a downsampled image
        a crop slot holds the projector input of its packed token, i.e. the unpadded grid of projector
        inputs resized like the features (``packed_grid``) — transformers resizes projected features,
        so a merged token of such a slot is projected from resized inputs (gc2bench's definition).
        """
        from gc2bench.models.llava_next import captured_attention_input, clip_encoder_layers

        layer = clip_encoder_layers(self.model.model.vision_tower)[request.layer]
        with captured_attention_input(layer) as captured:
            features, scores, selected = self._encode(pixel_values, request, project=False)
        keys = layer.self_attn.k_proj(captured["x"])
        slots = []
        for views, layout in zip(selected.split([layout.num_views for layout in layouts]), layouts):
            if layout.downsampled:
                packed = torch.cat([views[0], self.packed_grid(views, layout)])
                rows = layout.source_rows.to(packed.device)
                views = packed[rows.clamp(min=0)].view_as(views)  # slots without a packed token: never candidates
            slots.append(views)
        return features, scores, keys, torch.cat(slots)

    def pack(self, view_features: torch.Tensor, token_sources: torch.Tensor, layout) -> torch.Tensor:
        """LLM input features [M, D] of one image from its view features [V, N, D] and token sources [M]."""
        newline = self.model.model.image_newline
        if not layout.downsampled:
            return gather_tokens(view_features, newline, token_sources)
        packed = torch.cat([view_features[0], self.packed_grid(view_features, layout)])
        rows = layout.source_rows.to(token_sources.device)[token_sources.clamp(min=0)]
        tokens = packed.index_select(0, torch.where(token_sources == NEWLINE, 0, rows))  # -1 (no token) raises
        tokens[token_sources == NEWLINE] = newline.to(tokens.dtype)
        return tokens

    @staticmethod
    def packed_grid(view_features: torch.Tensor, layout) -> torch.Tensor:
        """[h'·w', D]: the unpadded crop grid, downsampled, row-major (transformers' ops, same order)."""
        rows, cols = layout.grid
        pps = layout.patches_per_side
        # transformers LlavaOnevisionModel.pack_image_features: grid, unpad_image, interpolate.
        grid = view_features[1:].view(rows, cols, pps, pps, -1).permute(4, 0, 2, 1, 3).contiguous()
        grid = grid.flatten(1, 2).flatten(2, 3)
        top, bottom, left, right = layout.unpadded_region()
        grid = grid[:, top:bottom, left:right]
        if layout.downsampled:
            grid = F.interpolate(grid[None], list(layout.packed_size), mode="bilinear")[0]
        return grid.flatten(1).transpose(0, 1)
