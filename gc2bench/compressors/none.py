"""No compression: every packed token reaches the LLM, exactly as the model pipeline packs them."""

from __future__ import annotations

from gc2bench.compressors.base import ScoreRequest, Selection, crop_order_selection


class NoCompression:
    """Keeps the packed sequence (thumbnail, unpadded crops, one newline per unpadded row) of the layouts' pipeline."""

    name = "none"
    kind = "vision"
    score_request = ScoreRequest("none")
    ratio = 1.0
    seed = 0
    unpad = True
    convention = "all packed tokens (the model pipeline's packing)"

    def __init__(self, name: str = "none"):
        self.name = name

    def params(self) -> dict:
        return {"ratio": 1.0, "convention": self.convention}

    def select(self, scores: list, layouts: list) -> Selection:
        """``scores`` is ignored (one entry per image, possibly None); sources come from the layouts."""
        return crop_order_selection(layouts)
