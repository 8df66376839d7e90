"""What a vision-stage compressor receives and returns.

Conventions (shared by every compressor and model adapter):

- A *view* is one vision-tower input: view 0 is the thumbnail (the whole image squashed to
  one crop), views 1..n are the AnyRes crops in row-major grid order. Each view yields
  ``N = patches_per_side**2`` patch tokens (576 for CLIP-L/336, 16 for the tiny model).
- A *token source* names where an emitted LLM token comes from: ``v * N + p`` for patch
  ``p`` (row-major inside the view) of view ``v``, and ``NEWLINE`` (-1) for the model's
  ``image_newline`` embedding. The packed sequence transformers builds
  (``pack_image_features``) is one such list; a compressor returns another, shorter one.
- Padding entries in batched source tensors are ``PAD`` (-2) and always come last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

NEWLINE = -1
PAD = -2


@dataclass
class ScoreRequest:
    """Which per-view token score a compressor needs from the model adapter.

    kind: ``cls_logit`` (head-mean pre-softmax CLS logits q·k·scale, CLS column dropped),
          ``cls_softmax`` (head-mean post-softmax CLS attention, CLS column dropped),
          ``cosine`` (−cos(x_i, mean_j x_j) over the view's patch features; no CLS needed),
          or ``none`` (no score: e.g. no compression, random).
    layer: index into the vision encoder's layers (-1 = last layer, -2 = penultimate).
    """

    kind: str = "none"
    layer: int = -1


@dataclass
class Selection:
    """The tokens a vision-stage compressor keeps for a batch of B images.

    token_sources: [B, P] long, emission order, PAD after the first ``num_tokens[b]`` entries.
    num_tokens:    [B] long, emitted tokens per image (newlines included).
    crop_budgets:  [B, C] float retention ratio r_j per crop (row-major), NaN-padded; None
                   for methods without per-crop budgets.
    info:          method-specific extras (JSON-serialisable once moved to host).
    """

    token_sources: torch.Tensor
    num_tokens: torch.Tensor
    crop_budgets: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def per_image(self) -> list[torch.Tensor]:
        """Token sources of each image without padding (one host sync for the whole batch)."""
        counts = self.num_tokens.tolist()
        return [row[:n] for row, n in zip(self.token_sources, counts)]


def gather_tokens(view_features: torch.Tensor, image_newline: torch.Tensor, token_sources: torch.Tensor) -> torch.Tensor:
    """Emitted LLM tokens of one image.

    view_features: [V, N, D]; image_newline: [D]; token_sources: [M] (no PAD) → [M, D].
    Only the M emitted rows are copied (the V·N rows are not).
    """
    tokens = view_features.flatten(0, 1).index_select(0, token_sources.clamp(min=0))
    tokens[token_sources == NEWLINE] = image_newline.to(tokens.dtype)
    return tokens


def keep_top_per_view(candidates: list[torch.Tensor], scores: list[torch.Tensor], ratio: float,
                      tokens_per_view: int) -> Selection:
    """Per view, keep the top ``round(ratio · n_v)`` of its n_v candidate tokens; emit in candidate order.

    candidates: B tensors [P_b] of token sources (NEWLINE entries are always kept);
    scores: B tensors [V_b, N]. Ties go to the lower candidate position. ``round`` is
    round-half-to-even, as Python's. No host–device sync.
    """
    device = scores[0].device
    batch, n_tok = len(candidates), tokens_per_view
    sources = torch.nn.utils.rnn.pad_sequence([c.to(device) for c in candidates], batch_first=True,
                                              padding_value=PAD)                       # [B, P]
    views_max = max(s.shape[0] for s in scores)
    table = torch.full((batch, views_max * n_tok), -math.inf, device=device)
    for b, s in enumerate(scores):
        table[b, : s.numel()] = s.flatten().float()
    is_token = sources >= 0
    token_scores = table.gather(1, sources.clamp(min=0)).masked_fill(~is_token, -math.inf) + 0.0
    groups = torch.where(is_token, torch.arange(batch, device=device)[:, None] * views_max + sources // n_tok,
                         batch * views_max).flatten()
    counts = torch.bincount(groups, minlength=batch * views_max + 1)
    quotas = torch.round(counts.double() * ratio).long()
    order = torch.sort(token_scores.flatten(), descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]                        # by group, then score
    group_start = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device) - group_start[groups[order]]
    keep = ((rank < quotas[groups]) & is_token.flatten()).view_as(sources) | (sources == NEWLINE)
    target = torch.where(keep, keep.cumsum(1) - 1, sources.shape[1])
    token_sources = torch.full((batch, sources.shape[1] + 1), PAD, dtype=torch.long, device=device)
    token_sources.scatter_(1, target, sources)
    return Selection(token_sources[:, :-1], keep.sum(1))


# ---------------------------------------------------------------------------------------------
# LLM-stage compressors (FastV, PDrop, SparseVLM, "+GlobalCom²"): pruning inside the decoder.
#
# The model adapter owns the mechanism (gc2bench/models/decoder_pruning.py): at prefill it asks
# the compressor for its stages, recomputes the attention rows of the stage's query tokens at
# ``score_layer`` (head-mean, post-softmax, over every key; no eager attention), asks the
# compressor which tokens to keep, and drops them (plus positions, masks, KV cache) at
# ``prune_layer``'s input. A compressor is pure tensor code on the tensors below.
# ---------------------------------------------------------------------------------------------

# Segment ids of image tokens (``LLMContext.segment``): the thumbnail is 0, crop j is 1 + j.
SEGMENT_TEXT = -1      # not an image token
SEGMENT_NEWLINE = -2   # an image_newline token
SEGMENT_RECYCLED = -3  # a token a compressor inserted (SparseVLM's cluster means)


@dataclass(frozen=True)
class DecoderStage:
    """One pruning step: attention rows from ``score_layer``'s q/k (at its input), tokens dropped
    at ``prune_layer``'s input; ``prune_layer`` is ``score_layer`` (PDrop: scored and dropped
    before layer l) or ``score_layer + 1`` (FastV: layer K−1's attention, pruned before layer K;
    SparseVLM: layer l's attention, dropped from layer l's output)."""

    score_layer: int
    prune_layer: int


@dataclass
class LLMContext:
    """What a compressor sees at one stage of one prefill (B rows, L positions, left padding).

    hidden:       [B, L, D] residual stream entering ``score_layer`` (for ``query_rows``) or
                  ``prune_layer`` (for ``prune``).
    input_embeds: [B, L0, D] the LLM's input embeddings (layer 0 input, before any pruning);
                  ``original_index`` maps current positions into it.
    original_index: [B, L] long, each current position's index in the unpruned prompt
                  (-1 for a recycled token or padding added by re-padding).
    image:        [B, L] bool, image tokens (patch tokens, newlines and recycled tokens).
    valid:        [B, L] bool, non-padding.
    segment:      [B, L] long, SEGMENT_* or the view (0 thumbnail, 1 + j crop j) of an image token.
    image_tokens_at_start: [B] long, image tokens of each row before any pruning.
    segment_budgets: [B, S] float or None, per-segment retention (index = segment id) when a
                  vision-stage selection supplied crop budgets ("+GlobalCom²"); NaN-padded.
    attention:    [B, L] float or None, head-mean post-softmax attention of the stage's query
                  rows to every key, averaged over the query rows (0 at padding); set for ``prune``.
    generator:    a seeded torch.Generator for methods with randomness.
    """

    stage_index: int
    stage: DecoderStage
    hidden: torch.Tensor
    input_embeds: torch.Tensor
    original_index: torch.Tensor
    image: torch.Tensor
    valid: torch.Tensor
    segment: torch.Tensor
    image_tokens_at_start: torch.Tensor
    segment_budgets: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    generator: torch.Generator | None = None


@dataclass
class PruneDecision:
    """keep: [B, L] bool — which positions survive (text and padding must stay True; the
    mechanism checks). recycled: None, or B tensors [E_b, D] of new hidden states inserted
    right after each row's last kept image token (compacted positions only)."""

    keep: torch.Tensor
    recycled: list[torch.Tensor] | None = None


class LLMStageCompressor:
    """Protocol (documentation only) of an LLM-stage compressor.

    kind = "llm"; name; params() -> dict (with "convention");
    score_request: ScoreRequest for the vision stage ("none", or CLS for "+GlobalCom²");
    select(scores, layouts) -> Selection: the vision-stage selection (usually every packed
        token; "+GlobalCom²" also returns crop_budgets);
    positions: "keep" (kept tokens keep their position ids, FastV) or "compact" (renumbered);
    stages(num_layers) -> list[DecoderStage], in increasing layer order;
    query_rows(ctx) -> [B, L] bool, the query tokens whose attention rows the stage needs;
    prune(ctx) -> PruneDecision.
    """

    kind = "llm"
