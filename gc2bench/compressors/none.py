"""No compression: every packed token reaches the LLM, exactly as the model pipeline packs them."""

from __future__ import annotations

import torch

from gc2bench.compressors.base import PAD, ScoreRequest, Selection


class NoCompression:
    """Keeps the packed sequence (thumbnail, unpadded crops, one newline per unpadded row) of the layouts' pipeline."""

    name = "none"
    score_request = ScoreRequest("none")
    ratio = 1.0

    def __init__(self, name: str = "none"):
        self.name = name

    def params(self) -> dict:
        return {"ratio": 1.0, "convention": "all packed tokens (the model pipeline's packing)"}

    def select(self, scores: list, layouts: list) -> Selection:
        """``scores`` is ignored (one entry per image, possibly None); sources come from the layouts."""
        sources = [layout.packed_sources for layout in layouts]
        token_sources = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD)
        return Selection(token_sources, torch.tensor([len(s) for s in sources]))
