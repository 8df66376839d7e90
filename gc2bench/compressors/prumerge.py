"""LLaVA-PruMerge (Shang et al., ICCV 2025, arXiv 2403.15388; public code 42Shawn/LLaVA-PruMerge,
``llava/model/multimodal_encoder/clip_encoder.py``), applied to each AnyRes view.

Per view v with n_v candidate tokens (``unpad=True``: the tokens that survive LLaVA-NeXT's
unpadding; ``unpad=False``: all N patches):

1. a = CLS attention of the last CLIP layer, all heads as one head: softmax over the 1+N keys
   of q_CLS·kᵀ/√C, CLS column dropped (``score=cls_softmax_fullwidth``, the authors' code).
2. Keep k_v = floor(R·n_v) tokens by a (``adaptive=False``, the default, a fixed R for a fair
   comparison), or the authors' adaptive rule (``adaptive=True``): with c outliers a_i > Q3 +
   1.5·IQR among the n scores of the group (``iqr_scope``: the view, or all views of the image),
   k_v = floor(n_v · c / n). ``plus=True`` (PruMerge+) adds spatially sampled tokens: every
   s-th candidate in raster order, s = floor(floor(1/r) / 3), r the ratio of step 2.
3. Each kept token p becomes y_p + Σ_{j ∈ nn(p)} a_j·y_j, nn(p) = the 32 candidates of its view
   with the largest cosine similarity of last-layer keys (``neighbor_pool=all``: every other
   candidate, kept or not, as the code and the paper's Algorithm 1 do), y = the projector's
   input (``hidden_states[vision_feature_layer]``); the adapter then projects the result.
4. One summary token per view, Σ_{j pruned} a_j·y_j (the code's ``extra_one_token``).

Emission (``order=score``, the authors' order): per view, the top-k in descending a, then the
PruMerge+ samples in raster order, then the summary; no newlines. ``order=spatial``: the
candidate order (packed order with newlines when ``unpad=True``), each summary right after its
view's last candidate.

``score=cosine`` (−cos(x_i, mean x), for towers without CLS such as LLaVA-OneVision's SigLIP) is
a gc2bench stand-in; its merge weights are softmax(score) over the view's candidates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gc2bench.compressors.base import MergeInputs, ScoreRequest, Selection
from gc2bench.compressors.fastervlm import all_view_tokens
from gc2bench.config import check_choice, validate_ratio
from gc2bench.layout import NEWLINE, PAD, VIEW_SUMMARY, OneVisionLayout

SCORES = ("cls_softmax_fullwidth", "cls_softmax", "cosine")
IQR_SCOPES = ("view", "image")
NEIGHBOR_POOLS = ("all", "pruned")
ORDERS = ("score", "spatial")


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"prumerge: {key}={value!r} is not true or false")
    return value


def iqr_upper_fence(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Q3 + 1.5·(Q3 − Q1) of each group's values, quartiles as numpy's default ``percentile``.

    values: [E] float32; group: [E] long in [0, num_groups). Returns [num_groups] float32 (NaN for
    an empty group). Linear interpolation between order statistics at index q·(n−1), in float32
    with numpy's operation order, so the authors' ``outlier_dectection`` fences are reproduced.
    """
    values = values.float()
    sizes = torch.bincount(group, minlength=num_groups)
    if values.numel() == 0:
        return torch.full((num_groups,), math.nan, device=values.device)
    order = torch.sort(values, stable=True).indices
    ordered = values[order[torch.sort(group[order], stable=True).indices]]  # by group, then value
    start = sizes.cumsum(0) - sizes
    last = (sizes - 1).clamp(min=0)
    quartiles = []
    for q in (0.25, 0.75):
        virtual = sizes.double() * q + (1.0 - q) - 1.0  # numpy: n·q + (α + q(1 − α − β)) − 1, α = β = 1
        below = torch.minimum(virtual.floor().long().clamp(min=0), last)
        above = torch.minimum(below + 1, last)
        gamma = (virtual - virtual.floor()).float()
        low = ordered[(start + below).clamp(max=values.numel() - 1)]
        high = ordered[(start + above).clamp(max=values.numel() - 1)]
        diff = high - low
        quartiles.append(torch.where(gamma >= 0.5, high - diff * (1.0 - gamma), low + diff * gamma))
    q1, q3 = quartiles
    fence = q3 + 1.5 * (q3 - q1)
    return torch.where(sizes > 0, fence, torch.full_like(fence, math.nan))


class PruMerge:
    """PruMerge / PruMerge+ as a vision-stage compressor (see the module docstring)."""

    kind = "vision"
    seed = 0

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "prumerge",
        adaptive: bool = False,
        iqr_scope: str = "view",
        plus: bool = False,
        score: str = "cls_softmax_fullwidth",
        layer: int = -1,
        neighbors: int = 32,
        neighbor_pool: str = "all",
        include_center: bool = True,
        extra_token: bool = True,
        unpad: bool = True,
        order: str = "score",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.adaptive = _flag(adaptive, "adaptive")
        self.iqr_scope = check_choice(iqr_scope, IQR_SCOPES, "iqr_scope", "prumerge")
        self.plus = _flag(plus, "plus")
        self.score = check_choice(score, SCORES, "score", "prumerge")
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"prumerge: layer={layer!r} is not an integer index into the vision encoder's layers")
        self.layer = layer
        if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 0:
            raise ValueError(f"prumerge: neighbors={neighbors!r} is not an integer >= 0")
        self.neighbors = neighbors
        self.neighbor_pool = check_choice(neighbor_pool, NEIGHBOR_POOLS, "neighbor_pool", "prumerge")
        self.include_center = _flag(include_center, "include_center")
        self.extra_token = _flag(extra_token, "extra_token")
        self.unpad = _flag(unpad, "unpad")
        self.order = check_choice(order, ORDERS, "order", "prumerge")
        if self.plus and not self.adaptive and math.floor(1.0 / self.ratio) < 6:
            raise ValueError(
                f"prumerge: plus=true with ratio={ratio} samples every candidate (PruMerge+'s stride "
                f"floor(floor(1/R)/3) is 1 for R > 1/6), so nothing is pruned: use ratio <= 1/6 "
                "or adaptive=true"
            )
        self.score_request = ScoreRequest(self.score, self.layer, merge_inputs=True)

    def params(self) -> dict:
        """Under ``adaptive`` R is unused: ``ratio`` 1.0 (a ratio sweep runs it once) and ``variant`` adaptive."""
        variant = {"ratio": 1.0, "variant": "adaptive"} if self.adaptive else {"ratio": self.ratio}
        return {
            **variant,
            "adaptive": self.adaptive,
            "iqr_scope": self.iqr_scope,
            "plus": self.plus,
            "score": self.score,
            "layer": self.layer,
            "neighbors": self.neighbors,
            "neighbor_pool": self.neighbor_pool,
            "include_center": self.include_center,
            "extra_token": self.extra_token,
            "unpad": self.unpad,
            "order": self.order,
            "convention": self.convention,
        }

    @property
    def convention(self) -> str:
        tokens = "unpadded tokens" if self.unpad else "N patches"
        keep = (
            f"IQR outliers of CLS attention (k_v = floor(n_v·c/n), n over the {self.iqr_scope}); R unused"
            if self.adaptive
            else "k_v = floor(R·n_v) by CLS attention"
        )
        parts = [f"PruMerge{'+' if self.plus else ''} per view over its n_v {tokens}: {keep}"]
        if self.plus:
            parts.append("+ every floor(floor(1/r)/3)-th candidate in raster order (more than R)")
        center = "y_p + " if self.include_center else ""
        parts.append(
            f"each kept y_p -> {center}sum of a_j·y_j over its {self.neighbors} key-nearest "
            f"{'candidates' if self.neighbor_pool == 'all' else 'pruned tokens'} (projector inputs)"
        )
        if self.extra_token:
            parts.append("+ 1 summary token per view with pruned tokens")
        parts.append(
            "emitted per view in descending score, no newlines"
            if self.order == "score"
            else "emitted in spatial order" + (", newlines kept" if self.unpad else ", no newlines")
        )
        return "; ".join(parts)

    # -- selection ----------------------------------------------------------------------------

    def candidates(self, layout) -> torch.Tensor:
        """[P] token sources PruMerge chooses from, in spatial order (NEWLINE entries when ``unpad``)."""
        if self.unpad:
            return layout.packed_sources
        if isinstance(layout, OneVisionLayout):
            raise ValueError(
                "prumerge: unpad=false (all padded-grid patches) does not apply to LLaVA-OneVision's "
                "packed grid; use unpad=true"
            )
        return all_view_tokens(layout)

    def select(self, scores: list[torch.Tensor], layouts: list, merge_inputs: MergeInputs | None = None) -> Selection:
        """Kept tokens of B images, and their merged projector inputs when ``merge_inputs`` is given.

        scores: B tensors [V_b, N] (the requested CLS attention, or the cosine stand-in);
        merge_inputs: keys [V_b, N, K] and projector inputs [V_b, N, C] per image. Without
        ``merge_inputs`` only the selection is computed (``replacement_features`` is None).
        """
        device = scores[0].device
        n_tok = layouts[0].tokens_per_view
        view_counts = torch.tensor([layout.num_views for layout in layouts], device=device)
        total_views = int(view_counts.sum())
        view_offset = view_counts.cumsum(0) - view_counts
        score = torch.cat([s.float() for s in scores])  # [T, N]

        sources = torch.nn.utils.rnn.pad_sequence(
            [self.candidates(layout).to(device) for layout in layouts], batch_first=True, padding_value=PAD
        )  # [B, P]
        is_patch = sources >= 0
        local_view = torch.where(is_patch, sources.div(n_tok, rounding_mode="floor"), 0)
        slot = (view_offset[:, None] + local_view) * n_tok + torch.where(is_patch, sources % n_tok, 0)  # into [T·N]
        candidate = torch.zeros(total_views * n_tok, dtype=torch.bool, device=device)
        candidate[slot[is_patch]] = True
        candidate = candidate.view(total_views, n_tok)
        num_candidates = candidate.sum(1)  # n_v

        kept, emit_rank = self._keep(score, candidate, num_candidates, view_counts)
        pruned = candidate & ~kept
        has_summary = pruned.any(1) & self.extra_token

        # Emission: candidate entries, then one summary slot per view; sorted by an emission key.
        batch, views_max = len(layouts), int(view_counts.max())
        view_ids = torch.arange(views_max, device=device)
        summary_view = (view_offset[:, None] + view_ids).clamp(max=total_views - 1)  # [B, Vmax] global view
        summary_valid = (view_ids < view_counts[:, None]) & has_summary[summary_view]
        entry_emitted = is_patch & kept.flatten()[slot]
        position = torch.arange(sources.shape[1], device=device).expand_as(sources)
        if self.order == "spatial":
            entry_emitted |= sources == NEWLINE
            entry_key = 2 * position
            last = torch.full((batch, views_max), -1, dtype=torch.long, device=device)
            last.scatter_reduce_(1, torch.where(is_patch, local_view, 0), torch.where(is_patch, position, -1), "amax")
            summary_key = 2 * last + 1
        else:
            stride = n_tok + 2
            entry_key = local_view * stride + emit_rank.flatten()[slot]
            summary_key = view_ids.expand(batch, -1) * stride + n_tok + 1
        emitted = torch.cat([entry_emitted, summary_valid], 1)
        key = torch.cat([entry_key, summary_key], 1).masked_fill(~emitted, torch.iinfo(torch.long).max)
        order = torch.sort(key, dim=1, stable=True).indices
        num_tokens = emitted.sum(1)
        all_sources = torch.cat([sources, VIEW_SUMMARY - view_ids.expand(batch, -1)], 1)
        token_sources = all_sources.gather(1, order)
        token_sources[torch.arange(order.shape[1], device=device) >= num_tokens[:, None]] = PAD
        selection = Selection(token_sources, num_tokens)
        if merge_inputs is None:
            return selection

        # Rows of the feature table: T·N merged patch slots, T summaries, one zero row (newlines).
        merged, summaries = self._merge(score, candidate, kept, pruned, merge_inputs)
        table = torch.cat([merged.flatten(0, 1), summaries, summaries.new_zeros(1, summaries.shape[-1])])
        row = torch.where(is_patch, slot, total_views * n_tok + total_views)
        row = torch.cat([row, total_views * n_tok + summary_view], 1).gather(1, order)
        dtype = merge_inputs.features[0].dtype
        selection.replacement_features = [table[r[:n]].to(dtype) for r, n in zip(row, num_tokens.tolist())]
        return selection

    def _keep(
        self, score: torch.Tensor, candidate: torch.Tensor, num_candidates: torch.Tensor, view_counts: torch.Tensor
    ):
        """kept [T, N] bool and each kept token's emission rank within its view (score order)."""
        total_views, n_tok = score.shape
        device = score.device
        if self.adaptive:
            if self.iqr_scope == "view":
                group, num_groups = torch.arange(total_views, device=device), total_views
            else:
                group = torch.repeat_interleave(torch.arange(len(view_counts), device=device), view_counts)
                num_groups = len(view_counts)
            element_group = group[:, None].expand(-1, n_tok)[candidate]
            values = score[candidate]
            fence = iqr_upper_fence(values, element_group, num_groups)
            outliers = torch.bincount(element_group[values > fence[element_group]], minlength=num_groups)
            sizes = torch.bincount(element_group, minlength=num_groups)
            # The authors: ratio = len(outliers) / len(attn); top-k with k = int(N * ratio).
            ratio = (outliers.double() / sizes.clamp(min=1).double())[group]  # [T]
        else:
            ratio = torch.full((total_views,), self.ratio, dtype=torch.float64, device=device)
        quota = (num_candidates.double() * ratio).floor().long()

        masked = score.masked_fill(~candidate, -math.inf)
        by_score = torch.sort(masked, dim=1, descending=True, stable=True).indices  # ties: lower patch first
        rank = torch.empty_like(by_score)
        rank.scatter_(1, by_score, torch.arange(n_tok, device=device).expand(total_views, -1))
        kept = candidate & (rank < quota[:, None])
        emit_rank = rank
        if self.plus:
            # Authors (adaptive path): arange(0, N - 1, int(int(1 / r) / 3)), minus tokens already kept.
            step = torch.where(ratio > 0, (1.0 / ratio).floor(), torch.full_like(ratio, math.inf))
            stride = (step / 3).floor().clamp(min=1)  # their code fails below 1
            raster = candidate.long().cumsum(1) - 1  # rank among candidates
            sampled = (
                candidate
                & (raster < (num_candidates - 1)[:, None])
                & (torch.fmod(raster.double(), stride[:, None]) == 0)
                & ~kept
            )
            emit_rank = torch.where(sampled, quota[:, None] + sampled.long().cumsum(1) - 1, rank)
            kept = kept | sampled
        return kept, emit_rank

    def _merge(
        self,
        score: torch.Tensor,
        candidate: torch.Tensor,
        kept: torch.Tensor,
        pruned: torch.Tensor,
        merge_inputs: MergeInputs,
    ):
        """Merged projector inputs of every slot [T, N, C] and each view's summary [T, C], float32."""
        keys = F.normalize(torch.cat(merge_inputs.keys).float(), dim=-1)  # [T, N, K]
        features = torch.cat(merge_inputs.features).float()  # [T, N, C]
        n_tok = candidate.shape[1]
        if self.score == "cosine":
            weight = score.masked_fill(~candidate, -math.inf).softmax(dim=1).nan_to_num(0.0)
        else:
            weight = score * candidate
        similarity = keys @ keys.transpose(1, 2)  # [T, N, N]
        pool = candidate & ~kept if self.neighbor_pool == "pruned" else candidate
        eye = torch.eye(n_tok, dtype=torch.bool, device=score.device)
        similarity = similarity.masked_fill(~pool[:, None, :] | eye, -math.inf)
        count = min(self.neighbors, n_tok - 1)
        mixing = torch.zeros_like(similarity)  # [T, N, N]: row p weighs y_j
        if count > 0:
            nearest_similarity, nearest = torch.sort(similarity, dim=2, descending=True, stable=True)
            nearest_similarity, nearest = nearest_similarity[..., :count], nearest[..., :count]
            nearest_weight = weight.gather(1, nearest.flatten(1)).view_as(nearest)
            mixing.scatter_(2, nearest, nearest_weight * (nearest_similarity > -math.inf))
        if self.include_center:
            mixing = mixing + eye
        merged = mixing @ features
        summaries = ((weight * pruned)[:, None, :] @ features).squeeze(1)
        return merged, summaries
