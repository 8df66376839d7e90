"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2"; public code pkunlp-icler/FastV):
inside the LLM. Layers < K see every token; layer K−1's post-softmax attention from the last
prompt token, averaged over heads, ranks the image tokens; the top round(r · N) are kept
(in their original order) and keep their original position ids (gaps); the whole image block
(thumbnail, crops, newlines) is prunable.

``budget_of``: ``block`` (N = the image tokens actually in the prompt) or a number such as
2880 (N fixed, as the GlobalCom² papers apply FastV to LLaVA-NeXT; the count is capped at
the tokens present).

``share``: ``kept`` (r = R, FastV's own R) or ``layer_average`` (r = (R·L − K)/(L − K), so that the
layer-averaged share (K + (L − K)·r)/L is R: the AAAI GlobalCom² paper's "equivalent token count").

``decode``: ``reselect`` (the authors' mask path, ``modeling_llama.py``: each generated token's
layer K−1 attention over the whole cache re-ranks the prompt's image tokens and layers ≥ K see only
the top k; the prefill masks instead of dropping, so the cache stays whole) or ``static`` (chosen
once at prefill, decoding on the shorter cache, as their ``fastv_kvcache.py``). The mechanism is the
decoder pruner's (``gc2bench/models/decoder_pruning.py``); ``kept_counts`` gives it k.

``crop_order``: ``packed`` (transformers' order, the default), or ``sequential`` / ``reversed``:
the crops emitted one after another, 1..n or n..1 (AAAI GlobalCom² Fig. 4; see
``gc2bench.compressors.base.crop_block_sources``), to measure positional bias.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import (
    DecoderStage,
    LLMContext,
    PruneDecision,
    ScoreRequest,
    Selection,
    check_crop_order,
    crop_order_params,
    crop_order_selection,
)
from gc2bench.config import check_choice, validate_ratio


def keep_top_image_tokens(ctx: LLMContext, scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, L] keep mask: every non-image position, plus the top ``counts[b]`` image tokens of row b by
    ``scores`` [B, L] (ties to the lower position). No host–device sync."""
    ranked = scores.masked_fill(~ctx.image, -torch.inf) + 0.0
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return ~ctx.image | (rank < counts[:, None])


SHARES = ("kept", "layer_average")
DECODES = ("reselect", "static")


class FastV:
    """FastV (see module docstring). ratio: R in (0, 1]; layer: K >= 1; budget_of: ``block`` | a count (2880);
    share: ``kept`` (R kept from layer K) | ``layer_average`` (R = layer-averaged share); decode:
    ``reselect`` (the authors' mask path) | ``static`` (selected once at prefill); crop_order."""

    kind = "llm"
    positions = "keep"
    score_request = ScoreRequest("none")
    seed = 0
    unpad = True
    wants_query_attention = False

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "fastv",
        layer: int = 2,
        budget_of: str | int = "block",
        share: str = "kept",
        decode: str = "reselect",
        crop_order: str = "packed",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.crop_order = check_crop_order(crop_order, name)
        self.share = check_choice(share, SHARES, "share", name)
        self.decode = check_choice(decode, DECODES, "decode", name)
        self.layer = int(layer)
        if self.layer < 1:
            raise ValueError(f"fastv: layer={layer} must be >= 1 (layer K-1's attention ranks the tokens)")
        if budget_of != "block":
            try:
                budget_of = int(budget_of)
            except (TypeError, ValueError):
                raise ValueError(f"fastv: budget_of={budget_of!r} must be 'block' or a token count like 2880") from None
        self.budget_of = budget_of
        self._kept_share: float | None = None if self.share == "layer_average" else self.ratio

    def kept_share(self, num_layers: int) -> float:
        """r, the share kept from layer K on: R (``kept``), or (R·L − K)/(L − K) so that (K + (L − K)·r)/L = R
        (``layer_average``; ValueError when R <= K/L, which layers < K alone exceed)."""
        if self.layer >= num_layers:
            raise ValueError(f"fastv: layer={self.layer} but the LLM has {num_layers} layers")
        if self.share == "kept":
            return self.ratio
        if self.ratio * num_layers <= self.layer:
            raise ValueError(
                f"fastv: ratio={self.ratio} cannot be the layer-averaged share (share=layer_average) with "
                f"layer={self.layer} on a {num_layers}-layer LLM: layers 0..{self.layer - 1} see every "
                f"image token, so the share is at least {self.layer}/{num_layers} = "
                f"{self.layer / num_layers:.4g}"
            )
        return (self.ratio * num_layers - self.layer) / (num_layers - self.layer)

    @property
    def convention(self) -> str:
        base = "the image tokens in the prompt" if self.budget_of == "block" else f"{self.budget_of} tokens"
        if self.share == "kept":
            kept = f"keeps round(R x {base}) image tokens from layer {self.layer} on"
        else:
            kept = (
                f"keeps round(r x {base}) image tokens from layer {self.layer} on, r = (R x L - {self.layer})/"
                f"(L - {self.layer}) so that the layer-averaged share over the L layers is R"
            )
        decode = (
            "each generated token re-ranks the image tokens by its own layer K-1 attention and masks the "
            "others in layers >= K (full KV cache)"
            if self.decode == "reselect"
            else "decoding attends to the tokens kept at prefill (shorter KV cache)"
        )
        return f"{kept}; original positions; {decode}"

    def params(self) -> dict:
        return {
            "ratio": self.ratio,
            "layer": self.layer,
            "budget_of": self.budget_of,
            "share": self.share,
            "decode": self.decode,
            **crop_order_params(self.crop_order),
            "convention": self.convention,
        }

    def select(self, scores: list, layouts: list) -> Selection:
        return crop_order_selection(layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        self._kept_share = self.kept_share(num_layers)
        return [DecoderStage(self.layer - 1, self.layer)]

    def schedule_info(self, num_layers: int) -> dict:
        """JSON record of the schedule on a ``num_layers``-layer LLM (for run records)."""
        kept = self.kept_share(num_layers)
        share = (self.layer + (num_layers - self.layer) * kept) / num_layers
        return {"num_layers": num_layers, "layers": [self.layer], "kept_share": kept, "layer_share": share}

    def layer_counts(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """Image tokens entering each layer for a prompt with ``num_image_tokens`` of them."""
        base = num_image_tokens if self.budget_of == "block" else self.budget_of
        kept = min(num_image_tokens, round(base * self.kept_share(num_layers)))
        return [num_image_tokens] * self.layer + [kept] * (num_layers - self.layer)

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        rows = torch.zeros_like(ctx.valid)
        rows[:, -1] = True  # left padding: the last position is every row's last prompt token
        return rows

    def kept_counts(self, image_tokens_at_start: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B] long image tokens kept from layer K on (capped at the ``present`` ones)."""
        if self._kept_share is None:
            raise RuntimeError("fastv: prune() before stages(num_layers): share=layer_average is solved there")
        base = image_tokens_at_start if self.budget_of == "block" else torch.full_like(present, self.budget_of)
        return torch.minimum(torch.round(base.double() * self._kept_share).long(), present)

    def prune(self, ctx: LLMContext) -> PruneDecision:
        counts = self.kept_counts(ctx.image_tokens_at_start, ctx.image.sum(1))
        return PruneDecision(keep_top_image_tokens(ctx, ctx.attention, counts))
