"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2"; public code pkunlp-icler/FastV):
inside the LLM. Layers < K see every token; layer K−1's post-softmax attention from the last
prompt token, averaged over heads, ranks the image tokens; the top round(R · N) are kept
(in their original order) and keep their original position ids (gaps). Pruning happens at
prefill only; the whole image block (thumbnail, crops, newlines) is prunable.

``budget_of``: ``block`` (N = the image tokens actually in the prompt) or a number such as
2880 (N fixed, as the GlobalCom² papers apply FastV to LLaVA-NeXT; the count is capped at
the tokens present).

``crop_order``: ``packed`` (transformers' order, the default), or ``sequential`` / ``reversed``:
the crops emitted one after another, 1..n or n..1 (AAAI GlobalCom² Fig. 4; see
``gc2bench.compressors.base.crop_block_sources``), to measure positional bias.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import (DecoderStage, LLMContext, PruneDecision, ScoreRequest, Selection,
                                      check_crop_order, crop_order_params, crop_order_selection)
from gc2bench.config import validate_ratio


def keep_top_image_tokens(ctx: LLMContext, scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, L] keep mask: every non-image position, plus the top ``counts[b]`` image tokens of row b by
    ``scores`` [B, L] (ties to the lower position). No host–device sync."""
    ranked = scores.masked_fill(~ctx.image, -torch.inf) + 0.0
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ~ctx.image | (rank < counts[:, None])


class FastV:
    kind = "llm"
    positions = "keep"
    score_request = ScoreRequest("none")

    def __init__(self, ratio: float = 0.25, name: str = "fastv", layer: int = 2, budget_of: str | int = "block",
                 crop_order: str = "packed"):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.crop_order = check_crop_order(crop_order, name)
        self.layer = int(layer)
        if self.layer < 1:
            raise ValueError(f"fastv: layer={layer} must be >= 1 (layer K-1's attention ranks the tokens)")
        if budget_of != "block":
            try:
                budget_of = int(budget_of)
            except (TypeError, ValueError):
                raise ValueError(f"fastv: budget_of={budget_of!r} must be 'block' or a token count like 2880") from None
        self.budget_of = budget_of

    def params(self) -> dict:
        base = "the image tokens in the prompt" if self.budget_of == "block" else f"{self.budget_of} tokens"
        return {"ratio": self.ratio, "layer": self.layer, "budget_of": self.budget_of,
                **crop_order_params(self.crop_order),
                "convention": f"keeps round(R x {base}) image tokens from layer {self.layer} on; original positions"}

    def select(self, scores: list, layouts: list) -> Selection:
        return crop_order_selection(layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        if self.layer >= num_layers:
            raise ValueError(f"fastv: layer={self.layer} but the LLM has {num_layers} layers")
        return [DecoderStage(self.layer - 1, self.layer)]

    def schedule_info(self, num_layers: int) -> dict:
        """JSON record of the schedule on a ``num_layers``-layer LLM (for run records)."""
        self.stages(num_layers)
        share = (self.layer + (num_layers - self.layer) * self.ratio) / num_layers
        return {"num_layers": num_layers, "layers": [self.layer], "layer_share": share}

    def layer_counts(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """Image tokens entering each layer for a prompt with ``num_image_tokens`` of them."""
        base = num_image_tokens if self.budget_of == "block" else self.budget_of
        kept = min(num_image_tokens, round(base * self.ratio))
        return [num_image_tokens] * self.layer + [kept] * (num_layers - self.layer)

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        rows = torch.zeros_like(ctx.valid)
        rows[:, -1] = True  # left padding: the last position is every row's last prompt token
        return rows

    def prune(self, ctx: LLMContext) -> PruneDecision:
        present = ctx.image.sum(1)
        base = ctx.image_tokens_at_start if self.budget_of == "block" else torch.full_like(present, self.budget_of)
        counts = torch.minimum(torch.round(base.double() * self.ratio).long(), present)
        return PruneDecision(keep_top_image_tokens(ctx, ctx.attention, counts))
