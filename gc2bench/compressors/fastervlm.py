"""FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token
Pruning"; public code Theia-4869/FasterVLM): rank each view's tokens by the post-softmax,
head-mean CLS attention of the CLIP layer that produces the features (the penultimate one),
keep the top k per view, emit in spatial order.

``unpad=True`` (default): k = round(R · n_v) of each view's tokens that survive LLaVA-NeXT's
unpadding, newlines kept, as the GlobalCom² papers compare it (R applied after unpadding).
``unpad=False``: the authors' own LLaVA-NeXT path — k = round(R · N) of all N patches of
every view, no unpadding, no newlines, crops emitted in raster order over the padded grid
(their ``mm_patch_merge_type = 'spatial'``). FasterVLM takes k as a token count; round()
reproduces their counts for the usual ratios (R = 0.1 → 58 of 576).

``score=cosine`` replaces the CLS attention by −cos(x_i, mean x) for towers without CLS
(LLaVA-OneVision); it is a gc2bench extension, recorded in every result's parameters.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import ScoreRequest, Selection, keep_top_per_view
from gc2bench.config import check_choice, validate_ratio

# cls_softmax: the method itself. cosine: a stand-in for vision towers without CLS (SigLIP in
# LLaVA-OneVision), the GlobalCom² AAAI paper's §4.3 score; not part of FasterVLM.
SCORES = ("cls_softmax", "cosine")


def all_view_tokens(layout) -> torch.Tensor:
    """[V·N] sources: the thumbnail's patches, then the padded crop grid in raster order (LLaVA-NeXT;
    the OneVision adapter refuses ``unpad=false``)."""
    return torch.cat([torch.arange(layout.tokens_per_view), layout.grid_sources().flatten()])


class FasterVLM:
    kind = "vision"
    seed = 0

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "fastervlm",
        unpad: bool = True,
        layer: int = -2,
        score: str = "cls_softmax",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.unpad = bool(unpad)
        self.layer = int(layer)
        self.score = check_choice(score, SCORES, "score", "fastervlm")
        self.score_request = ScoreRequest(score, self.layer)

    @property
    def convention(self) -> str:
        return (
            "R of each view's unpadded tokens (round), newlines kept"
            if self.unpad
            else "R of all 576-style patches of every view (round), no unpadding, no newlines"
        )

    def params(self) -> dict:
        return {
            "ratio": self.ratio,
            "unpad": self.unpad,
            "layer": self.layer,
            "score": self.score,
            "convention": self.convention,
        }

    def select(self, scores: list[torch.Tensor], layouts: list) -> Selection:
        """scores: B tensors [V_b, N] of CLS attention; layouts: B layouts → kept sources."""
        candidates = [layout.packed_sources if self.unpad else all_view_tokens(layout) for layout in layouts]
        return keep_top_per_view(candidates, scores, self.ratio, layouts[0].tokens_per_view)
