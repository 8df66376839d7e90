"""Random control: a seeded uniform random subset with FasterVLM's per-view accounting.

Keeps round(R · n_v) of each view's candidate tokens (``unpad=True``: the tokens that survive
unpadding, newlines kept), chosen uniformly at random from a generator seeded once, so a run
is reproducible given its sample order.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import ScoreRequest, Selection, keep_top_per_view
from gc2bench.compressors.fastervlm import all_view_tokens
from gc2bench.config import validate_ratio


class RandomKeep:
    kind = "vision"
    score_request = ScoreRequest("none")

    def __init__(self, ratio: float = 0.25, name: str = "random", seed: int = 0, unpad: bool = True):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.seed = int(seed)
        self.unpad = bool(unpad)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def convention(self) -> str:
        return (
            "R of each view's unpadded tokens (round), newlines kept"
            if self.unpad
            else "R of all patches of every view (round), no unpadding, no newlines"
        )

    def params(self) -> dict:
        return {"ratio": self.ratio, "seed": self.seed, "unpad": self.unpad, "convention": self.convention}

    def select(self, scores: list, layouts: list) -> Selection:
        """``scores`` is ignored (entries may be None); layouts: B layouts → kept sources."""
        random_scores = [
            torch.rand(layout.num_views, layout.tokens_per_view, generator=self.generator) for layout in layouts
        ]
        candidates = [layout.packed_sources if self.unpad else all_view_tokens(layout) for layout in layouts]
        return keep_top_per_view(candidates, random_scores, self.ratio, layouts[0].tokens_per_view)
