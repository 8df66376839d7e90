"""Views analysis (GlobalCom² AAAI paper, §3.2 (I) and Fig. 2): the LLM sees one kind of view only.

- ``thumbnail_only``: the thumbnail's N tokens (576 on CLIP-L/336), sources ``0..N-1`` in spatial
  (row-major) order, no newline — exactly the thumbnail part of transformers' packed sequence.
- ``crops_only``: transformers' packed sequence without the thumbnail: the unpadded crop grid row
  by row, each row followed by its ``image_newline`` (``newlines=keep``, default), or the crop tokens
  alone (``newlines=drop``). The paper ("using them separately as input") does not say what happens
  to the newline tokens; ``keep`` feeds the crops exactly as the model packs them.

An image given as its base view only (LLaVA-OneVision, multi-image prompts: view then one newline)
keeps its N view tokens under ``thumbnail_only``; ``crops_only`` refuses it (it has no crops).

Not ratio-driven: ``ratio`` is ignored and params() report 1.0, so a sweep over ratios runs each
variant once (same parameters → same run directory → later jobs skip).
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import ScoreRequest, Selection
from gc2bench.config import check_choice
from gc2bench.layout import NEWLINE, PAD

VIEWS = ("thumbnail_only", "crops_only")
NEWLINE_MODES = ("keep", "drop")


class ViewsOnly:
    """Keep the thumbnail's tokens only, or the crops' packed tokens only (see module docstring).

    views: ``thumbnail_only`` | ``crops_only``; newlines (crops_only): ``keep`` | ``drop``.
    """

    kind = "vision"
    score_request = ScoreRequest("none")
    ratio = 1.0
    seed = 0
    unpad = True

    def __init__(self, views: str = "thumbnail_only", newlines: str = "keep", name: str = "views"):
        self.views = check_choice(views, VIEWS, "views", "views")
        self.newlines = check_choice(newlines, NEWLINE_MODES, "newlines", "views")
        self.name = str(name)

    @property
    def convention(self) -> str:
        if self.views == "thumbnail_only":
            return "thumbnail only: its N tokens in spatial order, no crop tokens, no newlines (ratio not applied)"
        kept = "with one newline per packed row" if self.newlines == "keep" else "without newlines"
        return (
            f"crops only: transformers' packed crop tokens (unpadded grid), {kept}; "
            "no thumbnail tokens (ratio not applied)"
        )

    def params(self) -> dict:
        if self.views == "thumbnail_only":
            return {"ratio": 1.0, "variant": self.views, "convention": self.convention}
        return {"ratio": 1.0, "variant": self.views, "newlines": self.newlines, "convention": self.convention}

    def __repr__(self) -> str:
        return f"ViewsOnly(views={self.views!r}, newlines={self.newlines!r})"

    def select(self, scores: list, layouts: list) -> Selection:
        """``scores`` is ignored (entries may be None); layouts: B layouts → token_sources [B, P], num_tokens [B]."""
        if not layouts:
            raise ValueError("views: no layouts (need one per image)")
        if self.views == "thumbnail_only":
            sources = [torch.arange(layout.tokens_per_view) for layout in layouts]
        else:
            sources = []
            for b, layout in enumerate(layouts):
                if layout.num_crops == 0:
                    raise ValueError(
                        f"views: views=crops_only, but image {b} has no crops (a LLaVA-OneVision image "
                        "of a multi-image prompt is given as its base view only)"
                    )
                packed = layout.packed_sources[layout.tokens_per_view :]  # the thumbnail comes first
                sources.append(packed if self.newlines == "keep" else packed[packed != NEWLINE])
        token_sources = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD)
        return Selection(token_sources, torch.tensor([len(s) for s in sources]), info={"views": self.views})
