"""PDrop (Xing et al., "PyramidDrop", CVPR 2025; public code Cooperx521/PyramidDrop): inside the
LLM, image tokens are dropped in stages.

As the authors' code computes it (``llava/model/modeling_llama_pdrop.py``, ``pdrop_rank_drop``):

- stages at layers ``l_1 < … < l_S`` (default [8, 16, 24]); stage s scores with layer l_s's own
  q/k (input_layernorm, rotary) on the residual entering l_s and drops tokens there, so layers
  < l_1 see every image token (``DecoderStage(l_s, l_s)``);
- query: one row, the last token of the whole prompt (their inference path takes index
  ``prompt_len + image_tokens − 1`` of the unpadded row: the last prompt token, which with left
  padding is every row's last position);
- score: post-softmax attention of that row over every key, head-mean, image columns only;
- stage s keeps the top ⌊N·λ^s⌋ image tokens, N = image tokens of the row at the start (their
  ``int(image_tokens · ratio_list[s])`` from the original count, not iterated floors), emitted in
  spatial (original) order; the whole image block (thumbnail, crops, newlines) is prunable;
- positions compacted after each drop (their ``position_ids = arange`` of the new length).

λ: an explicit ``lam``, or solved from ``ratio`` R so that the layer-averaged share of image
tokens over all L decoder layers equals R: share(λ) = (l_1 + Σ_s (l_{s+1} − l_s)·λ^s)/L with
l_{S+1} = L (layers before l_1 count 1). share(0) = l_1/L is a floor: R ≤ l_1/L cannot be
reached (λ = 0 would drop every image token) and raises, naming layers that reach R. The
solver runs when the LLM's depth is known (``stages(num_layers)``, or ``num_layers=`` up front).
``layers`` may be a table {R: layers} (the experiments' per-ratio schedules, e.g. the PyramidDrop
author's [2, 8, 16] for low ratios where [8, 16, 24] cannot reach R); the table is recorded.

``crop_order``: ``packed`` (default) | ``sequential`` | ``reversed``, as FastV's (positional-bias analysis).

Decode: a generated token's position in a layer after a drop is its compacted cache length, as
theirs. Departures: their code truncates the sequence to 2048 tokens after each drop (not copied);
ties in the score go to the lower position (theirs: ``topk``'s order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise

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
from gc2bench.compressors.fastv import keep_top_image_tokens
from gc2bench.config import validate_ratio


def parse_layers(layers, method: str, minimum: int) -> list[int]:
    """``layers`` as a strictly increasing list of ints >= ``minimum``, or a ValueError naming the value."""
    if isinstance(layers, (str, bytes)):
        raise ValueError(f"{method}: layers={layers!r} must be a list of layer indices")
    try:
        parsed = [int(layer) for layer in layers]
        exact = all(float(layer) == int(layer) for layer in layers)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: layers={layers!r} must be a list of layer indices") from None
    if not parsed or not exact or any(b <= a for a, b in pairwise(parsed)) or parsed[0] < minimum:
        raise ValueError(
            f"{method}: layers={layers!r} must be a non-empty, strictly increasing list of integers >= {minimum}"
        )
    return parsed


def parse_budget_of(budget_of, method: str) -> str | int:
    if budget_of == "block":
        return budget_of
    try:
        value = int(budget_of)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"{method}: budget_of={budget_of!r} must be 'block' or a token count like 2880")
    return value


def layers_for_ratio(table: Mapping, ratio: float, method: str) -> tuple[dict, object]:
    """(the table as {R: layers}, the entry for ``ratio``) of a per-ratio ``layers`` table, or a ValueError naming
    the ratio when the table has no entry for it."""
    try:
        plain = {
            float(key): value if isinstance(value, str) else [int(v) for v in value] for key, value in table.items()
        }
    except (TypeError, ValueError):
        raise ValueError(f"{method}: layers={dict(table)!r} must map ratios to layer lists") from None
    for key, value in plain.items():
        if math.isclose(key, ratio, rel_tol=0, abs_tol=1e-9):
            return plain, value
    raise ValueError(
        f"{method}: layers has entries for ratio {sorted(plain)} but not for ratio={ratio} "
        f"(add one, or give compressor.layers a list)"
    )


def scaled_layers(layers: list[int], num_layers: int, reference: int, minimum: int) -> list[int]:
    """``layers`` (meant for a ``reference``-layer LLM) placed proportionally on ``num_layers`` layers."""
    out = []
    for layer in layers:
        candidate = max(minimum, round(layer * num_layers / reference), out[-1] + 1 if out else minimum)
        out.append(candidate)
    return out


def stage_share(first: int, spans: list[int], fractions: list[float], num_layers: int) -> float:
    """Layer-averaged share: ``first`` layers at 1, then ``spans[s]`` layers at ``fractions[s]``."""
    return (first + sum(span * f for span, f in zip(spans, fractions))) / num_layers


class PDrop:
    """PyramidDrop (see module docstring).

    ratio: target layer-averaged share R in (0, 1]; layers: stage layers l_s (>= 1), ``auto``, or a table
    {R: layers} (the experiments' per-ratio schedules; recorded as ``layers_by_ratio``);
    lam: explicit stage ratio λ in (0, 1] (overrides the solve); budget_of: ``block`` (N = image
    tokens in the prompt) or a token count such as 2880 (N fixed, counts capped at the tokens
    present); num_layers: the LLM's depth, to validate and solve at construction; crop_order:
    packed | sequential | reversed (see ``gc2bench.compressors.base.crop_block_sources``).
    """

    kind = "llm"
    positions = "compact"
    decode = "static"
    score_request = ScoreRequest("none")
    seed = 0
    unpad = True
    wants_query_attention = False

    def __init__(
        self,
        ratio: float = 0.5,
        name: str = "pdrop",
        layers="auto",
        lam: float | None = None,
        budget_of: str | int = "block",
        num_layers: int | None = None,
        crop_order: str = "packed",
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.crop_order = check_crop_order(crop_order, name)
        self.layers_by_ratio = layers_for_ratio(layers, self.ratio, "pdrop") if isinstance(layers, Mapping) else None
        if self.layers_by_ratio is not None:
            layers = self.layers_by_ratio[1]
        # "auto": the authors' layers (8, 16, 24) where they fit the LLM, else scaled to its depth (tiny models).
        self.auto_layers = layers is None or layers == "auto"
        self.layers = parse_layers((8, 16, 24) if self.auto_layers else layers, "pdrop", 1)
        if lam is not None:
            lam = float(lam)
            if not 0.0 < lam <= 1.0:
                raise ValueError(f"pdrop: lam={lam!r} must be in (0, 1] (the per-stage keep ratio λ)")
        self.lam = lam
        self.budget_of = parse_budget_of(budget_of, "pdrop")
        self._solved: dict[int, float] = {}
        self._active_lam: float | None = None
        self.num_layers = None if num_layers is None else int(num_layers)
        if self.num_layers is not None:
            self.stages(self.num_layers)

    # -- schedule ---------------------------------------------------------------------------------

    def _check_layers(self, num_layers: int) -> None:
        if self.auto_layers and self.layers[-1] >= num_layers:
            self.layers = scaled_layers(list((8, 16, 24)), num_layers, 32, 1)
        if self.layers[-1] >= num_layers:
            hint = scaled_layers(self.layers, num_layers, 32, 1)
            fit = f"; e.g. compressor.layers={hint}" if hint[-1] < num_layers else ""
            raise ValueError(
                f"pdrop: layers={self.layers} do not fit a {num_layers}-layer LLM (stage layers "
                f"must be 1..{num_layers - 1}){fit}"
            )

    def share(self, lam: float, num_layers: int, layers: list[int] | None = None) -> float:
        """Layer-averaged share of image tokens for stage ratio ``lam`` (continuous, before floors)."""
        layers = self.layers if layers is None else layers
        bounds = layers + [num_layers]
        spans = [b - a for a, b in pairwise(bounds)]
        return stage_share(layers[0], spans, [lam ** (s + 1) for s in range(len(layers))], num_layers)

    def solve_lam(self, num_layers: int, layers: list[int] | None = None) -> float:
        """The λ whose share equals ``ratio``, rounded to 12 decimals (so R = share(0.5) gives λ = 0.5 exactly
        and floors land on ⌊N·0.5^s⌋); ValueError if unreachable."""
        layers = self.layers if layers is None else layers
        if self.ratio >= 1.0:
            return 1.0
        floor = layers[0] / num_layers
        if self.ratio <= floor:
            raise ValueError(self._unreachable_message(num_layers, layers, floor))
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if self.share(mid, num_layers, layers) < self.ratio:
                lo = mid
            else:
                hi = mid
        rounded = round(hi, 12)
        return rounded if abs(self.share(rounded, num_layers, layers) - self.ratio) <= 1e-12 else hi

    def _unreachable_message(self, num_layers: int, layers: list[int], floor: float) -> str:
        head = (
            f"pdrop: ratio={self.ratio} cannot be reached with layers={layers} on a {num_layers}-layer LLM: "
            f"the first {layers[0]} layers see every image token, so the layer-averaged share is at least "
            f"{layers[0]}/{num_layers} = {floor:.4g} even as λ → 0"
        )
        suggestion = suggest_layers(self.ratio, num_layers, len(layers))
        if suggestion is None:
            return head + f"; no layer list reaches it on {num_layers} layers (layer 1 alone gives 1/{num_layers})"
        lam = PDrop(self.ratio, layers=suggestion).solve_lam(num_layers)
        return head + f". Earlier layers reach it, e.g. compressor.layers={suggestion} (λ ≈ {lam:.3f})"

    def lam_for(self, num_layers: int) -> float:
        """λ used on a ``num_layers``-layer LLM (explicit, or solved and cached)."""
        self._check_layers(num_layers)
        if self.lam is not None:
            return self.lam
        if num_layers not in self._solved:
            self._solved[num_layers] = self.solve_lam(num_layers)
        return self._solved[num_layers]

    def schedule(self, num_layers: int) -> list[float]:
        """[num_layers] kept fraction of the image tokens entering each layer (1, then λ^s from l_s on)."""
        lam = self.lam_for(num_layers)
        out = []
        for layer in range(num_layers):
            stage = sum(layer >= start for start in self.layers)
            out.append(lam**stage)
        return out

    def layer_counts(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """[num_layers] image tokens entering each layer for a row with ``num_image_tokens`` at the start."""
        lam = self.lam_for(num_layers)
        base = num_image_tokens if self.budget_of == "block" else self.budget_of
        counts, present = [], num_image_tokens
        for layer in range(num_layers):
            if layer in self.layers:
                present = min(math.floor(base * lam ** (self.layers.index(layer) + 1)), present)
            counts.append(present)
        return counts

    def schedule_info(self, num_layers: int) -> dict:
        """JSON record of the schedule used on a ``num_layers``-layer LLM (for run records)."""
        lam = self.lam_for(num_layers)
        return {
            "num_layers": num_layers,
            "layers": list(self.layers),
            "lam": lam,
            "layer_share": self.share(lam, num_layers),
            "kept_fraction_per_layer": self.schedule(num_layers),
        }

    # -- protocol ---------------------------------------------------------------------------------

    @property
    def convention(self) -> str:
        """In words; names the stage layers in use (``auto`` ones are placed on the LLM by ``stages``)."""
        base = "the image tokens in the prompt" if self.budget_of == "block" else f"{self.budget_of} tokens"
        return (
            "R is the layer-averaged share of image tokens over all decoder layers; stage s "
            f"(layers {self.layers}) keeps floor(N x lam^s) of N = {base}, lam solved from R "
            "unless lam is set; positions compacted"
        )

    def params(self) -> dict:
        by_ratio = {} if self.layers_by_ratio is None else {"layers_by_ratio": self.layers_by_ratio[0]}
        solved_lam = None if self.num_layers is None else self.lam_for(self.num_layers)
        return {
            "ratio": self.ratio,
            "layers": "auto" if self.auto_layers else list(self.layers),
            **by_ratio,
            "lam": self.lam,
            "budget_of": self.budget_of,
            "num_layers": self.num_layers,
            "solved_lam": solved_lam,
            **crop_order_params(self.crop_order),
            "convention": self.convention,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "convention")
        return f"PDrop({options})"

    def select(self, scores: list, layouts: list) -> Selection:
        return crop_order_selection(layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        self._active_lam = self.lam_for(num_layers)
        return [DecoderStage(layer, layer) for layer in self.layers]

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        rows = torch.zeros_like(ctx.valid)
        rows[:, -1] = True  # left padding: the last position is every row's last prompt token
        return rows

    def prune(self, ctx: LLMContext) -> PruneDecision:
        if self._active_lam is None:
            raise RuntimeError("pdrop: prune() before stages(num_layers): λ is solved for the LLM's depth there")
        present = ctx.image.sum(1)
        base = ctx.image_tokens_at_start if self.budget_of == "block" else torch.full_like(present, self.budget_of)
        fraction = self._active_lam ** (ctx.stage_index + 1)
        counts = torch.minimum((base.double() * fraction).floor().long(), present)
        return PruneDecision(keep_top_image_tokens(ctx, ctx.attention, counts))


def suggest_layers(ratio: float, num_layers: int, num_stages: int) -> list[int] | None:
    """A layer list whose share can equal ``ratio``: first stage at ⌊R·L/2⌋ (>= 1), the rest evenly
    spaced after it; None when even layer 1 leaves too many tokens (R <= 1/L)."""
    if ratio * num_layers <= 1:
        return None
    first = max(1, math.floor(ratio * num_layers / 2))
    stages = min(num_stages, num_layers - first)
    layers = sorted({first + round(i * (num_layers - first) / stages) for i in range(stages)})
    return [layer for layer in layers if layer < num_layers]
