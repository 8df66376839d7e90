""" "+GlobalCom²" (AAAI 2026 paper, §5.2 and Fig. 8): GlobalCom²'s per-crop budgets applied to an
LLM-stage method, which ranks tokens by its own score inside each segment. No public code; this is
our definition.

Vision stage: every packed token reaches the LLM (as ``compressor=none``); GlobalCom² scores the
views (its ``score_request``: CLS logits, or ``cosine`` on LLaVA-OneVision) and its allocation
gives r_j per crop (``GlobalCom2.select``'s ``crop_budgets``: softmax of the thumbnail's cell sums,
τ, clipped at 1). The thumbnail's budget is R. The mechanism passes them as
``ctx.segment_budgets`` [B, S] = [R, r_1, …, r_C] (float64, as the adapter builds it: the floors
below sit at exact products). Image tokens of a view without a budget (NaN or no column) are kept.

Inside the LLM, at each stage of the method, segment g (0 thumbnail, 1 + j crop j) with n_g image
tokens before any pruning keeps the top q_g tokens by the method's own score (FastV: last prompt
token's attention; SparseVLM: the raters'), ties to the lower position, spatial order:

- FastV (one stage, layer K): q_g = ⌊n_g·r_g⌋, GlobalCom²'s own floor, so every crop keeps
  what GlobalCom² alone would keep;
- SparseVLM (stage s with kept fraction κ_s of the method's schedule, preset or R-mode):
  q_g = ⌊n_g·min(1, r_g·κ_s/R)⌋, i.e. the method's stage fractions weighted per crop by
  r_g/R (softmax_sum: 1 + σ_g − mean σ, clipped); tokens it recycled earlier (segment ``RECYCLED``) keep
  ⌊n·κ_s/κ_{s−1}⌋ of the n present (κ_0 = 1); recycling itself is SparseVLM's, over all pruned tokens.

Newlines (``newlines``): ``keep`` (default) — never pruned and not counted, as GlobalCom² itself
treats them; ``prune`` — one more segment, of the n newlines, keeping ⌊n·R⌋ (FastV) or ⌊n·κ_s⌋
(SparseVLM) by the method's score.

R = 1 keeps every token (≡ ``compressor=none``): GlobalCom²'s r_j = R·(1 + σ_j − mean σ) would
still trim below-average crops there.

``crop_order`` (packed | sequential | reversed) moves the crop blocks as for FastV; quotas follow the
segment ids, so each crop's kept count does not depend on where its block sits.
"""

from __future__ import annotations

import torch

from gc2bench.compressors.base import (
    SEGMENT_NEWLINE,
    SEGMENT_RECYCLED,
    DecoderStage,
    LLMContext,
    PruneDecision,
    Selection,
    check_crop_order,
    crop_order_params,
    crop_order_selection,
)
from gc2bench.compressors.fastv import FastV
from gc2bench.compressors.globalcom2 import GlobalCom2
from gc2bench.compressors.sparsevlm import PrefillMemo, SparseVLM
from gc2bench.config import check_choice, validate_ratio

NEWLINE_MODES = ("keep", "prune")


def keep_top_per_group(scores: torch.Tensor, group: torch.Tensor, quotas: torch.Tensor) -> torch.Tensor:
    """[B, L] keep mask: in each row b and group g >= 0 the top ``quotas[b, g]`` positions by ``scores``
    (ties to the lower position); positions with group < 0 are kept. scores [B, L]; group [B, L]
    long; quotas [B, G] long. No host–device sync."""
    batch, length = scores.shape
    width = quotas.shape[1]
    ranked = group >= 0
    gid = torch.where(
        ranked, torch.arange(batch, device=group.device)[:, None] * width + group, batch * width
    ).flatten()
    order = torch.sort(
        scores.float().masked_fill(~ranked, -torch.inf).flatten() + 0.0, descending=True, stable=True
    ).indices
    order = order[torch.sort(gid[order], stable=True).indices]
    counts = torch.bincount(gid, minlength=batch * width + 1)
    start = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - start[gid[order]]
    limit = torch.cat([quotas.flatten(), quotas.new_zeros(1)])
    return ((rank < limit[gid]) | ~ranked.flatten()).view(batch, length)


class SegmentBudgets:
    """GlobalCom²'s allocation and the per-segment quotas shared by the "+GlobalCom²" variants."""

    def __init__(self, ratio: float, method: str, score: str, tau: float, allocation: str, newlines: str):
        check_choice(newlines, NEWLINE_MODES, "newlines", method)
        self.method = method
        self.ratio = ratio
        self.newlines = newlines
        self.allocator = GlobalCom2(ratio, name="globalcom2", score=score, tau=tau, allocation=allocation)

    def params(self) -> dict:
        return {
            "score": self.allocator.score,
            "tau": self.allocator.tau,
            "allocation": self.allocator.allocation,
            "newlines": self.newlines,
        }

    def select(self, scores: list, layouts: list, crop_order: str = "packed") -> Selection:
        """Every packed token (as ``none``; crop blocks in ``crop_order``) and GlobalCom²'s crop budgets
        r_j [B, C] (float64, NaN-padded)."""
        budgets = self.allocator.select(scores, layouts).crop_budgets
        packed = crop_order_selection(layouts, crop_order)
        return Selection(packed.token_sources, packed.num_tokens, budgets)

    def groups(self, ctx: LLMContext) -> tuple[torch.Tensor, int]:
        """[B, L] long rank group of each position (-1: kept unranked, e.g. text, kept newlines, a view
        without a budget column) and S: views are 0..S-1, newlines S, recycled tokens S + 1."""
        if ctx.segment_budgets is None:
            raise ValueError(
                f"{self.method}: no segment_budgets in the LLM context; the vision stage's "
                "crop_budgets must reach the decoder"
            )
        views = ctx.segment_budgets.shape[1]
        segment = ctx.segment
        group = torch.where(ctx.image & (segment >= 0) & (segment < views), segment, -1)
        group = torch.where(ctx.image & (segment == SEGMENT_RECYCLED), views + 1, group)
        newline = views if self.newlines == "prune" else -1
        return torch.where(ctx.image & (segment == SEGMENT_NEWLINE), newline, group), views

    @staticmethod
    def sizes(group: torch.Tensor, views: int) -> torch.Tensor:
        """[B, S + 2] long tokens per group."""
        batch = group.shape[0]
        width = views + 2
        flat = torch.where(group >= 0, torch.arange(batch, device=group.device)[:, None] * width + group, batch * width)
        return torch.bincount(flat.flatten(), minlength=batch * width + 1)[:-1].view(batch, width)

    def quotas(
        self,
        ctx: LLMContext,
        start: torch.Tensor,
        present: torch.Tensor,
        views: int,
        view_scale: float,
        newline_fraction: float,
        recycled_fraction: float,
    ) -> torch.Tensor:
        """[B, S + 2] long: ⌊n_g·min(1, r_g·view_scale)⌋ for views (n_g from ``start``), ⌊n·newline_fraction⌋
        for newlines, ⌊n·recycled_fraction⌋ of the recycled tokens ``present``."""
        budgets = ctx.segment_budgets.double()
        if view_scale != 1.0:
            budgets = budgets * view_scale
        view_quota = (start[:, :views].double() * budgets.clamp(max=1.0).nan_to_num(nan=1.0)).floor().long()
        newline_quota = (start[:, views].double() * min(newline_fraction, 1.0)).floor().long()
        recycled_quota = (present[:, views + 1].double() * min(recycled_fraction, 1.0)).floor().long()
        return torch.cat([view_quota, newline_quota[:, None], recycled_quota[:, None]], dim=1)


class FastVGlobalCom2:
    """FastV + GlobalCom²'s per-crop budgets (see module docstring). FastV's options: ``layer``;
    GlobalCom²'s: ``score``, ``tau``, ``allocation``; ``newlines``: keep | prune."""

    kind = "llm"
    positions = "keep"
    decode = "static"
    seed = 0
    unpad = True
    wants_query_attention = False

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "fastv_globalcom2",
        layer: int = 2,
        score: str = "cls_logit",
        tau: float = 10.0,
        allocation: str = "softmax_sum",
        newlines: str = "keep",
        crop_order: str = "packed",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.crop_order = check_crop_order(crop_order, name)
        self.fastv = FastV(self.ratio, name=name, layer=layer, decode="static")
        self.budgets = SegmentBudgets(self.ratio, name, score, tau, allocation, newlines)
        self.score_request = self.budgets.allocator.score_request

    @property
    def convention(self) -> str:
        return (
            f"FastV at layer {self.fastv.layer} inside each segment: the thumbnail keeps floor(n x R), crop j "
            "floor(n_j x r_j) (GlobalCom2's budgets), by last-prompt-token attention; newlines "
            f"{self.budgets.newlines} (prune: floor(n x R)); original positions; R = 1 keeps all"
        )

    def params(self) -> dict:
        return {
            "ratio": self.ratio,
            "layer": self.fastv.layer,
            **self.budgets.params(),
            **crop_order_params(self.crop_order),
            "convention": self.convention,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "convention")
        return f"FastVGlobalCom2({options})"

    def select(self, scores: list, layouts: list) -> Selection:
        return self.budgets.select(scores, layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        return self.fastv.stages(num_layers)

    def schedule_info(self, num_layers: int) -> dict:
        return {**self.fastv.schedule_info(num_layers), "per_segment": "floor(n_g x r_g), GlobalCom² budgets"}

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        return self.fastv.query_rows(ctx)

    def prune(self, ctx: LLMContext) -> PruneDecision:
        if self.ratio >= 1.0:
            return PruneDecision(torch.ones_like(ctx.valid))
        group, views = self.budgets.groups(ctx)
        sizes = self.budgets.sizes(group, views)
        quotas = self.budgets.quotas(ctx, sizes, sizes, views, 1.0, self.ratio, 1.0)
        return PruneDecision(keep_top_per_group(ctx.attention, group, quotas))


class SparseVLMGlobalCom2:
    """SparseVLM + GlobalCom²'s per-crop budgets (see module docstring). SparseVLM's options:
    ``layers``, ``preset``, ``tokens``, ``recycle``; GlobalCom²'s: ``score``, ``tau``, ``allocation``;
    ``newlines``: keep | prune."""

    kind = "llm"
    positions = "compact"
    decode = "static"
    seed = 0
    unpad = True
    wants_query_attention = False

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "sparsevlm_globalcom2",
        layers="auto",
        preset: int | None = None,
        tokens=None,
        recycle: bool = True,
        score: str = "cls_logit",
        tau: float = 10.0,
        allocation: str = "softmax_sum",
        newlines: str = "keep",
        num_layers: int | None = None,
        crop_order: str = "packed",
        counting: str = "authors",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.crop_order = check_crop_order(crop_order, name)
        self.sparsevlm = SparseVLM(
            self.ratio,
            name=name,
            layers=layers,
            preset=preset,
            tokens=tokens,
            recycle=recycle,
            num_layers=num_layers,
            counting=counting,
        )
        self.budgets = SegmentBudgets(self.ratio, name, score, tau, allocation, newlines)
        self.score_request = self.budgets.allocator.score_request
        self._start_sizes = PrefillMemo()

    def params(self) -> dict:
        inner = {k: v for k, v in self.sparsevlm.params().items() if k not in ("convention", "budget_of")}
        return {**inner, **self.budgets.params(), **crop_order_params(self.crop_order), "convention": self.convention}

    @property
    def convention(self) -> str:
        return (
            "SparseVLM inside each segment: at stage s segment g keeps floor(n_g x min(1, r_g x kappa_s / R)) "
            "(r: GlobalCom2's budgets, thumbnail R; kappa: SparseVLM's stage fractions) by the raters' attention; "
            "earlier recycled tokens keep floor(n x kappa_s / kappa_{s-1}); newlines "
            f"{self.budgets.newlines} (prune: floor(n x kappa_s)); positions compacted; R = 1 keeps all"
        )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "convention")
        return f"SparseVLMGlobalCom2({options})"

    def schedule(self, num_layers: int) -> list[float]:
        """SparseVLM's per-layer share (the segments follow it on average, weighted by r_g/R)."""
        return self.sparsevlm.schedule(num_layers)

    def schedule_info(self, num_layers: int) -> dict:
        return self.sparsevlm.schedule_info(num_layers)

    def select(self, scores: list, layouts: list) -> Selection:
        return self.budgets.select(scores, layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        return self.sparsevlm.stages(num_layers)

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        return self.sparsevlm.query_rows(ctx)

    def prune(self, ctx: LLMContext) -> PruneDecision:
        fractions = self.sparsevlm.active_fractions()
        if self.ratio >= 1.0:
            return PruneDecision(torch.ones_like(ctx.valid))
        group, views = self.budgets.groups(ctx)
        present = self.budgets.sizes(group, views)
        if ctx.stage_index == 0:
            newline_group = torch.where(ctx.image & (ctx.segment == SEGMENT_NEWLINE), views, group)
            self._start_sizes.store(ctx, self.budgets.sizes(newline_group, views))
        start = self._start_sizes.load(ctx, self.name)
        kappa = fractions[ctx.stage_index]
        previous = fractions[ctx.stage_index - 1] if ctx.stage_index > 0 else 1.0
        recycled_fraction = kappa / previous if previous > 0 else 0.0
        quotas = self.budgets.quotas(ctx, start, present, views, kappa / self.ratio, kappa, recycled_fraction)
        return self.sparsevlm.recycle_pruned(ctx, keep_top_per_group(ctx.attention, group, quotas))
