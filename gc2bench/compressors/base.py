"""What a vision-stage compressor receives and returns, and the contracts adapters rely on.

Conventions (shared by every compressor and model adapter):

- A *view* is one vision-tower input: view 0 is the thumbnail (the whole image squashed to
  one crop), views 1..n are the AnyRes crops in row-major grid order. Each view yields
  ``N = patches_per_side**2`` patch tokens (576 for CLIP-L/336, 16 for the tiny model).
- *Token sources* (``v * N + p``, ``NEWLINE``, ``PAD``, ``VIEW_SUMMARY - v``) are defined with the
  geometry in ``gc2bench.layout`` and re-exported here. A view summary's features come from
  ``Selection.replacement_features``, never from a patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import torch

from gc2bench.config import check_choice
from gc2bench.layout import NEWLINE, PAD
from gc2bench.layout import VIEW_SUMMARY as VIEW_SUMMARY
from gc2bench.layout import source_views as source_views


class ScoreKind(StrEnum):
    """Every per-view token score [V, N] a model adapter can compute (higher = more important).

    ``cls_logit``: head-mean pre-softmax CLS logits q·k·scale, CLS column dropped;
    ``cls_softmax``: head-mean post-softmax CLS attention, CLS column dropped;
    ``cls_softmax_fullwidth``: softmax over all 1+N keys of q·k/√C with q, k the full C-wide
        projections, all heads as one, CLS column dropped (the LLaVA-PruMerge code's attention);
    ``cosine``: −cos(x_i, mean_j x_j) over the view's projector inputs (no CLS needed);
    ``norm``: ‖x_i‖₂ of each patch's projector input (no CLS needed);
    ``none``: no score (e.g. no compression, random).
    An adapter lists the kinds it serves (``VisionStageAdapter.score_kinds``).
    """

    NONE = "none"
    CLS_LOGIT = "cls_logit"
    CLS_SOFTMAX = "cls_softmax"
    CLS_SOFTMAX_FULLWIDTH = "cls_softmax_fullwidth"
    COSINE = "cosine"
    NORM = "norm"


CLS_SCORES = (ScoreKind.CLS_LOGIT, ScoreKind.CLS_SOFTMAX, ScoreKind.CLS_SOFTMAX_FULLWIDTH)  # need a CLS token
FEATURE_SCORES = (ScoreKind.COSINE, ScoreKind.NORM)  # need only the projector inputs (models.adapter.feature_scores)


@dataclass
class ScoreRequest:
    """Which per-view token score a compressor needs from the model adapter.

    kind: a ``ScoreKind`` (or its name; anything else is a ConfigError naming the allowed kinds).
    layer: index into the vision encoder's layers (-1 = last layer, -2 = penultimate).
    merge_inputs: also gather ``MergeInputs`` (the keys of ``layer`` and the projector-input
          features) and pass them to ``select(scores, layouts, merge_inputs=...)``.
    """

    kind: ScoreKind = ScoreKind.NONE
    layer: int = -1
    merge_inputs: bool = False

    def __post_init__(self):
        self.kind = ScoreKind(check_choice(self.kind, tuple(ScoreKind), "kind", "ScoreRequest"))


@dataclass
class MergeInputs:
    """What a merging compressor gets besides scores (``ScoreRequest.merge_inputs``), B images.

    keys:     B tensors [V_b, N, K]: each patch slot's key projection (bias included, all heads
              concatenated) at the request's layer, CLS row dropped.
    features: B tensors [V_b, N, C]: each patch slot's projector input (the features the LLM
              would get before ``multi_modal_projector``), model dtype.
    """

    keys: list[torch.Tensor]
    features: list[torch.Tensor]


@dataclass
class Selection:
    """The tokens a vision-stage compressor keeps for a batch of B images.

    token_sources: [B, P] long, emission order, PAD after the first ``num_tokens[b]`` entries.
    num_tokens:    [B] long, emitted tokens per image (newlines included).
    crop_budgets:  [B, C] float retention ratio r_j per crop (row-major), NaN-padded; None
                   for methods without per-crop budgets.
    info:          method-specific extras (JSON-serialisable once moved to host).
    replacement_features: None (the adapter gathers each emitted token's own features), or B
                   tensors [num_tokens[b], C] of projector inputs, one per emitted token
                   (NEWLINE rows ignored), which the adapter projects instead.
    """

    token_sources: torch.Tensor
    num_tokens: torch.Tensor
    crop_budgets: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    replacement_features: list[torch.Tensor] | None = None

    def per_image(self) -> list[torch.Tensor]:
        """Token sources of each image without padding (one host sync for the whole batch)."""
        counts = self.num_tokens.tolist()
        return [row[:n] for row, n in zip(self.token_sources, counts)]


def gather_tokens(
    view_features: torch.Tensor, image_newline: torch.Tensor, token_sources: torch.Tensor
) -> torch.Tensor:
    """Emitted LLM tokens of one image.

    view_features: [V, N, D]; image_newline: [D]; token_sources: [M] (no PAD) → [M, D].
    Only the M emitted rows are copied (the V·N rows are not).
    """
    tokens = view_features.flatten(0, 1).index_select(0, token_sources.clamp(min=0))
    tokens[token_sources == NEWLINE] = image_newline.to(tokens.dtype)
    return tokens


def keep_top_per_view(
    candidates: list[torch.Tensor], scores: list[torch.Tensor], ratio: float, tokens_per_view: int
) -> Selection:
    """Per view, keep the top ``round(ratio · n_v)`` of its n_v candidate tokens; emit in candidate order.

    candidates: B tensors [P_b] of token sources (NEWLINE entries are always kept);
    scores: B tensors [V_b, N]. Ties go to the lower candidate position. ``round`` is
    round-half-to-even, as Python's. No host–device sync.
    """
    device = scores[0].device
    batch, n_tok = len(candidates), tokens_per_view
    sources = torch.nn.utils.rnn.pad_sequence(
        [c.to(device) for c in candidates], batch_first=True, padding_value=PAD
    )  # [B, P]
    views_max = max(s.shape[0] for s in scores)
    table = torch.full((batch, views_max * n_tok), -math.inf, device=device)
    for b, s in enumerate(scores):
        table[b, : s.numel()] = s.flatten().float()
    is_token = sources >= 0
    token_scores = table.gather(1, sources.clamp(min=0)).masked_fill(~is_token, -math.inf) + 0.0
    groups = torch.where(
        is_token, torch.arange(batch, device=device)[:, None] * views_max + sources // n_tok, batch * views_max
    ).flatten()
    counts = torch.bincount(groups, minlength=batch * views_max + 1)
    quotas = torch.round(counts.double() * ratio).long()
    order = torch.sort(token_scores.flatten(), descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, then score
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
SEGMENT_TEXT = -1  # not an image token
SEGMENT_NEWLINE = -2  # an image_newline token
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
    query_attention: [B, Q, L] float or None, those query rows one by one (rows past a row's query
                  count are 0), for a compressor with ``wants_query_attention`` (SparseVLM v1's rank).
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
    query_attention: torch.Tensor | None = None


@dataclass
class PruneDecision:
    """keep: [B, L] bool — which positions survive (text and padding must stay True; the
    mechanism checks). recycled: None, or B tensors [E_b, D] of new hidden states inserted
    right after each row's last kept image token (compacted positions only)."""

    keep: torch.Tensor
    recycled: list[torch.Tensor] | None = None


@runtime_checkable
class VisionStageCompressor(Protocol):
    """What model adapters and ``run`` read of every compressor; a vision-stage compressor (``kind == "vision"``,
    working between the vision tower and the LLM) is exactly this, an LLM-stage one adds ``LLMStageCompressor``.

    name: the method's name (run directories, records, error messages).
    kind: ``"vision"`` (``"llm"``: an ``LLMStageCompressor``; the adapter then builds a decoder pruner).
    score_request: the per-view score (and merge inputs) the adapter computes for ``select``.
    ratio: R as the method reads it (1.0 for methods that are not ratio-driven); the thumbnail's budget
        of a "+GlobalCom²" decoder stage.
    seed: seed of the method's randomness (the decoder pruner's generator; 0 for deterministic methods).
    unpad: ``False`` when the candidates are all padded-grid patches of every view (the LLaVA-NeXT-only
        conventions, which the OneVision adapter refuses); ``True``, or GlobalCom²'s unpad arithmetic
        (``llava`` | ``transformers``), when they are the unpadded tokens.
    convention: how R is counted, in words (``params()["convention"]``, recorded with every sample).
    params() -> dict: every option that changes the output (hashed into the run directory), with
        ``ratio`` and ``convention``.
    select(scores, layouts[, merge_inputs=]) -> Selection: scores are B tensors [V_b, N] (or None
        entries for ``ScoreRequest("none")``), layouts B layouts.
    """

    name: str
    kind: str
    score_request: ScoreRequest
    ratio: float
    seed: int
    unpad: bool | str
    convention: str

    def params(self) -> dict: ...

    def select(self, scores: list, layouts: list, **merge_inputs) -> Selection: ...


@runtime_checkable
class LLMStageCompressor(VisionStageCompressor, Protocol):
    """A compressor that prunes inside the decoder (FastV, PDrop, SparseVLM, "+GlobalCom²"); ``kind == "llm"``.

    ``select`` is its vision-stage selection (usually every packed token; "+GlobalCom²" also returns
    crop_budgets, which reach the decoder as ``LLMContext.segment_budgets`` with the thumbnail at R).
    positions: ``keep`` (kept tokens keep their position ids, FastV) or ``compact`` (renumbered).
    decode: ``reselect`` (each generated token re-ranks the prompt's image tokens; one stage, positions
        ``keep``, and ``kept_counts(image_tokens_at_start, present)`` giving k, as FastV) or ``static``.
    wants_query_attention: ``prune`` also gets each query row's attention (``LLMContext.query_attention``).
    stages(num_layers) -> list[DecoderStage], in increasing layer order (solves depth-dependent schedules);
    schedule_info(num_layers) -> dict: the schedule on that LLM, JSON, for run records;
    query_rows(ctx) -> [B, L] bool, the query tokens whose attention rows a stage needs;
    prune(ctx) -> PruneDecision.
    """

    positions: str
    decode: str
    wants_query_attention: bool

    def stages(self, num_layers: int) -> list[DecoderStage]: ...

    def schedule_info(self, num_layers: int) -> dict: ...

    def query_rows(self, ctx: LLMContext) -> torch.Tensor: ...

    def prune(self, ctx: LLMContext) -> PruneDecision: ...


# ---------------------------------------------------------------------------------------------
# Crop order (LLM-stage compressors' ``crop_order`` option; ``gc2bench analyze positional-bias``).
#
# ``packed``: transformers' order, the crops interleaved row by row over the unpadded grid.
# ``sequential`` / ``reversed``: the crops one after another, crop 1..n or crop n..1 (AAAI
# GlobalCom² paper, Fig. 4, "sequential crops" / "reversed crops"); each crop block is that crop's
# unpadded rows (its share of every packed-grid row), each row ended by ``image_newline``, i.e.
# the crop laid out as the model lays out a one-crop grid. The thumbnail stays first. A crop
# block's tokens and their order are the same in both orders; only the blocks move.
# ---------------------------------------------------------------------------------------------

CROP_ORDERS = ("packed", "sequential", "reversed")


def check_crop_order(crop_order, method: str) -> str:
    """``crop_order`` if it is one of CROP_ORDERS, else a ValueError naming the value."""
    return check_choice(crop_order, CROP_ORDERS, "crop_order", method)


def crop_block_sources(
    packed_sources: torch.Tensor, tokens_per_view: int, num_crops: int, crop_order: str
) -> torch.Tensor:
    """Token sources of one image with its crops emitted as blocks in ``crop_order``.

    packed_sources: [P] long, the packed order (thumbnail, then grid rows each ended by NEWLINE);
    returns [P'] long: the thumbnail, then one block per crop (crop order 1..n for ``sequential``,
    n..1 for ``reversed``), each block its patch tokens row by row with a NEWLINE after each row.
    P' = P + (newlines added where a packed row spans several crops). ``packed`` and images
    without crops return ``packed_sources`` itself.
    """
    check_crop_order(crop_order, "crop_order")
    if crop_order == "packed" or num_crops == 0:
        return packed_sources
    n_tok = tokens_per_view
    is_thumbnail = (packed_sources >= 0) & (packed_sources < n_tok)
    body = packed_sources[~is_thumbnail]
    is_newline = body == NEWLINE
    row = torch.cumsum(is_newline.long(), 0) - is_newline.long()  # packed-grid row of each entry
    patches, patch_row = body[~is_newline], row[~is_newline]
    crop = patches // n_tok - 1  # 0..n-1, row-major in the grid
    rank = crop if crop_order == "sequential" else num_crops - 1 - crop  # block position in the emission
    block_row = rank * (int(row.max()) + 1 if row.numel() else 1) + patch_row
    order = torch.sort(block_row, stable=True).indices  # stable: columns keep their order
    patches, block_row = patches[order], block_row[order]
    row_ends = torch.ones_like(block_row, dtype=torch.bool)
    row_ends[:-1] = block_row[1:] != block_row[:-1]
    newlines_before = torch.cumsum(row_ends.long(), 0) - row_ends.long()
    slot = torch.arange(len(patches)) + newlines_before
    out = torch.full((len(patches) + int(row_ends.sum()),), NEWLINE, dtype=packed_sources.dtype)
    out[slot] = patches
    return torch.cat([packed_sources[is_thumbnail], out])


def crop_order_params(crop_order: str) -> dict:
    """``{"crop_order": ...}`` for a compressor's ``params()``, empty for the default ``packed`` (so the
    parameters, and the run directories hashed from them, of default runs do not change)."""
    return {} if crop_order == "packed" else {"crop_order": crop_order}


def crop_order_selection(layouts: list, crop_order: str = "packed") -> Selection:
    """Every token of each image, in ``crop_order`` (``packed``: the layouts' packed sources, ``compressor=none``)."""
    sources = [
        crop_block_sources(layout.packed_sources, layout.tokens_per_view, layout.num_crops, crop_order)
        for layout in layouts
    ]
    token_sources = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD)
    return Selection(token_sources, torch.tensor([len(s) for s in sources]))
