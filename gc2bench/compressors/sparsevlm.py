"""SparseVLM (Zhang et al., ICML 2025; public code Gumpest/SparseVLMs): text-guided pruning of image
tokens inside the LLM, with recycling of pruned tokens. ``version``: ``v1.5`` (their HEAD,
``USE_VERSION=1_0``, the preset schedules below) or ``v1`` (commit b72c5d6: stages [2, 6, 15, 19],
stage s keeps min(int(rank_s·scale + bias), n − 1), rank_s the rank of the raters' attention rows
over the n image tokens, no pruning where rank_s = n; ``scale``/``bias`` as their scripts, or
R-driven scale = ⌊κ·N⌋/rank_0 per row with one κ for every stage).

As the authors' code computes it (``llava/model/language_model/modelling_sparse_llama.py``,
``score.py``, ``utils.py``):

- raters, chosen once per prefill from the LLM's input embeddings: V = the image tokens (here
  every image token of the row: patches and newlines), T = every text token after the row's last
  image token (to the end of the prompt, the assistant header included); p = softmax over T of
  V·Tᵀ (no scaling), averaged over V; raters = text tokens with p above the mean of p;
- stages at layers [2, 6, 15]: layer l runs on every token, its post-softmax attention (causal,
  head-mean) of the rater rows, averaged over raters, scores the image tokens, and the drop
  applies to layer l's output, i.e. before layer l + 1 (``DecoderStage(l, l + 1)``);
- stage s keeps the top k_s image tokens (spatial order; old recycled tokens compete too);
- recycling: of the n pruned tokens, the ⌊0.3·n⌋ + 1 with the highest score (layer l's output
  hidden states) are clustered by DPC-KNN into ⌊m/10⌋ + 1 groups (k nearest neighbours = the
  number of groups, distances ‖x_i − x_j‖/√D, density exp(−mean d²) + 1e-6·U[0,1) noise, centres =
  top ``distance-to-denser × density``, every token to its nearest centre); each group's mean is
  inserted after the kept image tokens, centre order; they are image tokens from then on;
- positions compacted (their ``position_ids[:, :new_length]``).

Schedules k_s (option names are ours):

- ``preset`` P ∈ {192, 128, 96, 64}: the authors' lists for 576 image tokens, 192 → [300, 200,
  110], 128 → [303, 110, 36], 96 → [238, 48, 26], 64 → [66, 30, 17]; scaled to the row's image
  block N as k_s = ⌊P_s·N/576⌋ (N = 576 gives theirs; ``budget_of: 2880`` scales to 2880 as the
  GlobalCom² paper's "R of 2880" comparison does). ``tokens`` = an explicit list in the same units.
  R is then only a label.
- R-mode (``preset: null``, the default): R is the layer-averaged share of image tokens over the L
  decoder layers, recycled tokens included, layer l of a stage counted after its drop (``counting:
  authors``, their "Equal Tokens", which reproduces their preset names 64.8/96.9/128.6/192.0) or
  with the tokens entering it (``counting: entering``; then p_s = l_s + 1 below, else p_s = l_s). The kept fractions κ = (κ_1, κ_2, κ_3) move along
  the authors' presets, (0,0,0) → 64 → 96 → 128 → 192 → (1,1,1), linearly between neighbours, to the
  point where share(κ) = R, with share(κ) = (p_1 + Σ_s (p_{s+1} − p_s)·ρ_s)/L, p_s the first layer
  counted at stage s's count, p_{S+1} = L, and ρ_s = κ_s + 0.03·(ρ_{s−1} − κ_s), ρ_0 = 1, the image tokens after stage
  s counting the recycled groups at their asymptotic rate (⌊0.3n⌋+1 taken, a tenth of them groups).
  k_s = ⌊κ_s·N⌋. share((0,0,0)) ≈ p_1/L is a floor: R below it raises, naming layers that reach it.

``crop_order``: ``packed`` (default) | ``sequential`` | ``reversed``, as FastV's (positional-bias analysis).

Departures from their code (the LLaVA-1.5, batch-1 path): batched (per-row counts, the clustering
loops over rows); a stage keeps min(k_s, n) of the n image tokens present (theirs min(k_s, n − 1),
which always prunes one, so R = 1 would not be the identity); when a stage would keep no image
token but recycles, its best token is kept so the groups have a place to go; group means are
exact means (theirs sum/(count + 1e-6)); rater scores and clustering in float32 (theirs in the
model dtype); the density noise comes from a CPU generator seeded with
``ctx.generator.initial_seed() + stage`` (0 without one), the same draw for every row, so a row's
result does not depend on its batch neighbours.
"""

from __future__ import annotations

import math
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
from gc2bench.compressors.pdrop import parse_budget_of, parse_layers, scaled_layers, stage_share
from gc2bench.config import check_choice, validate_ratio

PRESETS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}  # score.py, v1
PRESET_BASE = 576
RECYCLE_TAKE = 0.3  # share of the pruned tokens clustered (+1)
CLUSTER_DIVISOR = 10  # groups = ⌊taken/10⌋ + 1
RECYCLE_RATE = RECYCLE_TAKE / CLUSTER_DIVISOR  # asymptotic groups per pruned token, for the R-mode share
NOISE_SCALE = 1e-6
VERSIONS = ("v1.5", "v1")
DEFAULT_LAYERS = {"v1.5": (2, 6, 15), "v1": (2, 6, 15, 19)}  # score.py layer_dict (HEAD); b72c5d6 pruning_loc
COUNTINGS = ("authors", "entering")


def recycled_groups(num_pruned: int) -> tuple[int, int]:
    """(tokens taken, groups) for ``num_pruned`` pruned tokens: (⌊0.3n⌋ + 1, ⌊m/10⌋ + 1), (0, 0) for n = 0."""
    if num_pruned <= 0:
        return 0, 0
    taken = 3 * num_pruned // 10 + 1  # = int(n * 0.3) + 1 for every n < 2e5 (checked)
    return taken, taken // CLUSTER_DIVISOR + 1


def dpc_knn_means(x: torch.Tensor, num_groups: int, noise: torch.Tensor) -> torch.Tensor:
    """DPC-KNN cluster means of x [m, D] into ``num_groups`` groups (centre order); noise [m] in [0, 1).
    As their ``utils.cluster_and_merge``, with exact means (theirs divide by count + 1e-6)."""
    xf = x.float()
    dist = torch.cdist(xf[None], xf[None], compute_mode="donot_use_mm_for_euclid_dist")[0] / math.sqrt(x.shape[1])
    nearest = dist.topk(num_groups, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(-1)) + noise.to(dist) * NOISE_SCALE
    denser = density[None, :] > density[:, None]
    to_denser = torch.where(denser, dist, dist.max()).amin(-1)
    centres = torch.sort(to_denser * density, descending=True, stable=True).indices[:num_groups]
    group = dist[centres].argmin(0)
    group[centres] = torch.arange(num_groups, device=x.device)
    sums = xf.new_zeros(num_groups, x.shape[1]).index_add_(0, group, xf)
    sizes = torch.bincount(group, minlength=num_groups).to(xf)
    return (sums / sizes[:, None]).to(x.dtype)


def text_raters(ctx: LLMContext) -> torch.Tensor:
    """[B, L] bool, SparseVLM's raters on the unpruned sequence (see module docstring).

    Rows without image tokens or without text after them use the last position; rows whose
    scores are all equal (none above the mean) use every text token after the image.
    """
    if ctx.input_embeds is None:
        raise RuntimeError("sparsevlm: the raters need ctx.input_embeds (the LLM's input embeddings)")
    image, valid = ctx.image, ctx.valid
    length = image.shape[1]
    pos = torch.arange(length, device=image.device)
    last_image = torch.where(image, pos, -1).amax(1)
    after = valid & ~image & (pos > last_image[:, None]) & (last_image[:, None] >= 0)
    n_after = after.sum(1)
    width = int(n_after.max())
    raters = torch.zeros_like(image)
    if width > 0:
        text_pos = torch.sort(after.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
        text_valid = torch.arange(width, device=image.device) < n_after[:, None]
        dim = ctx.input_embeds.shape[-1]
        source = ctx.original_index.clamp(min=0)[..., None].expand(-1, -1, dim)
        emb = ctx.input_embeds.gather(1, source).float()  # [B, L, D]
        text = emb.gather(1, text_pos[..., None].expand(-1, -1, dim))  # [B, T, D]
        logits = (emb @ text.transpose(1, 2)).masked_fill(~text_valid[:, None, :], -torch.inf)
        probs = torch.where(text_valid[:, None, :] & image[..., None], logits.softmax(-1), 0.0)
        score = probs.sum(1) / image.sum(1).clamp(min=1)[:, None]  # [B, T]
        mean = score.sum(1, keepdim=True) / n_after.clamp(min=1)[:, None]
        chosen = text_valid & (score > mean)
        chosen = torch.where(chosen.any(1, keepdim=True), chosen, text_valid)
        raters.scatter_(1, text_pos, chosen)
    raters[:, -1] |= n_after == 0
    return raters


class PrefillMemo:
    """What a compressor computed at stage 0 of the current prefill, keyed by its input embeddings."""

    def __init__(self):
        self._key, self._value = None, None

    @staticmethod
    def key(ctx: LLMContext) -> tuple:
        embeds = ctx.input_embeds
        return embeds.data_ptr(), tuple(embeds.shape), str(embeds.device)

    def store(self, ctx: LLMContext, value) -> None:
        self._key, self._value = self.key(ctx), value

    def load(self, ctx: LLMContext, method: str):
        if self._key != self.key(ctx):
            raise RuntimeError(
                f"{method}: stage {ctx.stage_index} of a prefill whose stage 0 this compressor "
                "did not see (stage 0 fixes what later stages use)"
            )
        return self._value


class SparseVLM:
    """SparseVLM (see module docstring).

    ratio: R in (0, 1] (R-mode target; a label with ``preset``/``tokens``); layers: score layers
    l_s (drop before l_s + 1); preset: 192 | 128 | 96 | 64 | None; tokens: explicit k_s for 576
    image tokens; budget_of: ``block`` or a token count (2880) that k_s scale to; recycle: insert
    the cluster means (the method) or only drop; num_layers: validate and solve at construction;
    crop_order: packed | sequential | reversed (see ``gc2bench.compressors.base.crop_block_sources``).
    """

    kind = "llm"
    positions = "compact"
    decode = "static"
    score_request = ScoreRequest("none")
    seed = 0
    unpad = True

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "sparsevlm",
        layers="auto",
        preset: int | None = None,
        tokens=None,
        budget_of: str | int = "block",
        recycle: bool = True,
        num_layers: int | None = None,
        crop_order: str = "packed",
        counting: str = "authors",
        version: str = "v1.5",
        scale: float | None = None,
        bias: float = 0.0,
    ):
        self.ratio = validate_ratio(ratio)
        self.name = name
        self.counting = check_choice(counting, COUNTINGS, "counting", name)
        self.version = check_choice(version, VERSIONS, "version", name)
        self.crop_order = check_crop_order(crop_order, name)
        self.default_layers = DEFAULT_LAYERS[self.version]
        # "auto": the authors' layers where they fit the LLM, else scaled to its depth (tiny models).
        self.auto_layers = layers is None or layers == "auto"
        self.layers = parse_layers(self.default_layers if self.auto_layers else layers, "sparsevlm", 0)
        self.scale = None if scale is None else float(scale)
        self.bias = float(bias)
        if self.version == "v1" and (preset is not None or tokens is not None):
            raise ValueError(
                "sparsevlm: version=v1 keeps min(int(rank x scale + bias), n - 1) tokens per stage; "
                "preset/tokens are v1.5's schedules (give scale/bias, or neither for the R-driven scale)"
            )
        if self.version != "v1" and (scale is not None or bias != 0.0):
            raise ValueError(f"sparsevlm: scale/bias are version=v1's rule (version={self.version})")
        if self.scale is not None and self.scale < 0:
            raise ValueError(f"sparsevlm: scale={scale!r} must be >= 0")
        if preset is not None and tokens is not None:
            raise ValueError("sparsevlm: give preset or tokens, not both")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(
                    f"sparsevlm: preset={preset!r} is not one of {sorted(PRESETS)} (retained tokens "
                    "of the authors' schedules), or null for the R-driven schedule"
                )
            tokens = PRESETS[preset]
        if tokens is not None:
            try:
                tokens = [int(t) for t in tokens]
            except (TypeError, ValueError):
                raise ValueError(f"sparsevlm: tokens={tokens!r} must be a list of token counts") from None
            if any(t < 0 for t in tokens):
                raise ValueError(f"sparsevlm: tokens={tokens!r} must be counts >= 0")
        needed = len(tokens) if tokens is not None else len(PRESETS[192])
        if len(self.layers) != needed and self.version != "v1":
            what = f"tokens={tokens}" if tokens is not None else "the R-driven schedule (built on the 3-stage presets)"
            raise ValueError(f"sparsevlm: layers={self.layers} has {len(self.layers)} stages but {what} needs {needed}")
        self.preset = preset
        self.tokens = tokens
        self.budget_of = parse_budget_of(budget_of, "sparsevlm")
        self.recycle = bool(recycle)
        self._solved: dict[int, list[float]] = {}
        self._active: list[float] | None = None
        self._raters = PrefillMemo()
        self._first_stage = PrefillMemo()
        self.num_layers = None if num_layers is None else int(num_layers)
        if self.num_layers is not None:
            self.stages(self.num_layers)

    # -- schedule ---------------------------------------------------------------------------------

    def _check_layers(self, num_layers: int) -> None:
        if self.auto_layers and self.layers[-1] + 1 >= num_layers:
            self.layers = scaled_layers(list(self.default_layers), num_layers, 32, 0)
            if self.version == "v1":  # any number of stages: keep those that fit
                self.layers = [layer for layer in self.layers if layer + 1 < num_layers] or self.layers
        if self.layers[-1] + 1 >= num_layers:
            hint = scaled_layers(self.layers, num_layers, 32, 0)
            fit = f"; e.g. compressor.layers={hint}" if hint[-1] + 1 < num_layers else ""
            raise ValueError(
                f"sparsevlm: layers={self.layers} do not fit a {num_layers}-layer LLM (a stage scores "
                f"at layer l and drops before l + 1, so l must be 0..{num_layers - 2}){fit}"
            )

    def share(self, fractions, num_layers: int, layers: list[int] | None = None, counting: str | None = None) -> float:
        """Layer-averaged share of image tokens for kept fractions κ_s (recycled groups at their asymptotic rate),
        layer l of a stage counted after its drop (``authors``) or with the tokens entering it (``entering``)."""
        shift = 0 if (counting or self.counting) == "authors" else 1
        drops = [layer + shift for layer in (self.layers if layers is None else layers)]
        rate = RECYCLE_RATE if self.recycle else 0.0
        present, totals = 1.0, []
        for kappa in fractions:
            present = kappa + rate * (present - kappa)
            totals.append(present)
        bounds = drops + [num_layers]
        return stage_share(drops[0], [b - a for a, b in pairwise(bounds)], totals, num_layers)

    def _knots(self) -> list[tuple[float, ...]]:
        stages = len(self.layers)
        if self.version == "v1":  # one kept fraction for every stage (k = rank x scale with the rank unchanged)
            return [(0.0,) * stages, (1.0,) * stages]
        shapes = [tuple(t / PRESET_BASE for t in PRESETS[p]) for p in sorted(PRESETS)]
        return [(0.0,) * stages] + shapes + [(1.0,) * stages]

    def solve_fractions(self, num_layers: int, layers: list[int] | None = None) -> list[float]:
        """R-mode κ_s with share(κ) = R on the preset path; ValueError when R is below the path's floor."""
        knots = self._knots()
        if self.ratio >= 1.0:
            return list(knots[-1])
        values = [self.share(k, num_layers, layers) for k in knots]
        if self.ratio <= values[0]:
            raise ValueError(self._unreachable_message(num_layers, layers or self.layers, values[0]))
        for (a, b), (va, vb) in zip(pairwise(knots), pairwise(values)):
            if va < self.ratio <= vb:
                t = (self.ratio - va) / (vb - va)
                if t > 1.0 - 1e-12:
                    return list(b)
                return [x + t * (y - x) for x, y in zip(a, b)]
        raise AssertionError("unreachable: the preset path ends at share 1")

    def _unreachable_message(self, num_layers: int, layers: list[int], floor: float) -> str:
        head = (
            f"sparsevlm: ratio={self.ratio} cannot be reached with layers={layers} on a {num_layers}-layer LLM: "
            f"layers 0..{layers[0]} see every image token (and recycled groups follow), so the layer-averaged "
            f"share is at least {floor:.4g}"
        )
        for first in range(max(0, math.floor(self.ratio * num_layers / 2) - 1), -1, -1):
            stages = len(layers)
            candidate = [first + round(i * (num_layers - 1 - first) / stages) for i in range(stages)]
            if len(set(candidate)) < stages or candidate[-1] + 1 >= num_layers:
                continue
            if self.share(self._knots()[0], num_layers, candidate) < self.ratio:
                return head + f". Earlier layers reach it, e.g. compressor.layers={candidate}"
        return head + f"; no {len(layers)}-stage layer list reaches it on {num_layers} layers"

    def stage_fractions(self, num_layers: int) -> list[float]:
        """κ_s: kept image tokens after stage s as a fraction of the image block (before floors)."""
        self._check_layers(num_layers)
        if self.tokens is not None:
            return [t / PRESET_BASE for t in self.tokens]
        if self.scale is not None:
            raise ValueError(
                "sparsevlm: version=v1 with an explicit scale keeps a data-dependent count (the rank of "
                "the raters' attention); no schedule before the prompt is seen"
            )
        if num_layers not in self._solved:
            self._solved[num_layers] = self.solve_fractions(num_layers)
        return self._solved[num_layers]

    def schedule(self, num_layers: int) -> list[float]:
        """[num_layers] expected share of image tokens entering each layer (recycled at their asymptotic rate)."""
        fractions = self.stage_fractions(num_layers)
        rate = RECYCLE_RATE if self.recycle else 0.0
        present, out = 1.0, []
        for layer in range(num_layers):
            if layer - 1 in self.layers:
                kappa = fractions[self.layers.index(layer - 1)]
                present = kappa + rate * (present - kappa)
            out.append(present)
        return out

    def schedule_info(self, num_layers: int) -> dict:
        """JSON record of the schedule used on a ``num_layers``-layer LLM (for run records)."""
        fractions = self.stage_fractions(num_layers)
        return {
            "num_layers": num_layers,
            "layers": list(self.layers),
            "kept_fractions": fractions,
            "counting": self.counting,
            "layer_share": self.share(fractions, num_layers),
            **{f"layer_share_{c}": self.share(fractions, num_layers, counting=c) for c in COUNTINGS},
            "share_per_layer": self.schedule(num_layers),
        }

    def equivalent_tokens(self, num_image_tokens: int, num_layers: int, counting: str | None = None) -> float:
        """Layer-averaged image tokens of a row (``layer_counts``), layer l of a stage counted after its drop
        (``authors``: their printed "Equal Tokens") or entering it (``entering``)."""
        counts = self.layer_counts(num_image_tokens, num_layers)
        if (counting or self.counting) == "authors":
            counts = [counts[layer + 1] if layer in self.layers else n for layer, n in enumerate(counts)]
        return sum(counts) / num_layers

    def kept_count(self, stage: int, base: int, fractions: list[float]) -> int:
        """k_s for an image block of ``base`` tokens (host arithmetic, as ``prune`` does on device)."""
        if self.tokens is not None:
            return self.tokens[stage] * base // PRESET_BASE
        return math.floor(base * fractions[stage])

    def layer_counts(self, num_image_tokens: int, num_layers: int) -> list[int]:
        """[num_layers] image tokens (recycled included) entering each layer for a row with
        ``num_image_tokens`` at the start: exactly what ``prune`` produces."""
        fractions = self.stage_fractions(num_layers)
        base = num_image_tokens if self.budget_of == "block" else self.budget_of
        present, out = num_image_tokens, []
        cap = 1 if self.version == "v1" else 0  # v1 keeps at most n - 1 (assuming the raters' rank holds)
        for layer in range(num_layers):
            if layer - 1 in self.layers:
                kept = min(self.kept_count(self.layers.index(layer - 1), base, fractions), present - cap)
                groups = recycled_groups(present - kept)[1] if self.recycle else 0
                if groups and kept == 0:
                    kept = 1
                    groups = recycled_groups(present - kept)[1]
                present = kept + groups
            out.append(present)
        return out

    # -- protocol ---------------------------------------------------------------------------------

    @property
    def convention(self) -> str:
        base = "the image tokens in the prompt" if self.budget_of == "block" else f"{self.budget_of} tokens"
        counted = (
            "layer l of a stage counted after its drop, as the authors' Equal Tokens"
            if self.counting == "authors"
            else "each layer counted with the tokens entering it"
        )
        if self.tokens is not None:
            rule = (
                f"stage s keeps floor(k_s x N / 576) image tokens, k = {self.tokens}"
                + (f" (preset {self.preset})" if self.preset is not None else "")
                + "; R is a label"
            )
        elif self.version == "v1" and self.scale is not None:
            rule = (
                f"v1 (b72c5d6): stage s keeps min(int(rank_s x {self.scale} + {self.bias}), n - 1) image tokens, "
                "rank_s = rank of the raters' attention over the image tokens; R is a label"
            )
        elif self.version == "v1":
            rule = (
                "v1 (b72c5d6): stage s keeps min(int(rank_s x scale), n - 1) image tokens, rank_s = rank of the "
                "raters' attention over the image tokens, scale = floor(kappa x N) / rank_0 per row, kappa solved "
                f"so that the layer-averaged share ({counted}) is R while the rank holds"
            )
        else:
            rule = (
                "R is the layer-averaged share of image tokens (recycled included) over all decoder layers "
                f"({counted}); stage s keeps floor(kappa_s x N), kappa on the authors' preset path solved from R"
            )
        return f"{rule}; N = {base}; text raters; recycled cluster means; positions compacted"

    def params(self) -> dict:
        return {
            "ratio": self.ratio,
            "layers": "auto" if self.auto_layers else list(self.layers),
            "preset": self.preset,
            "tokens": self.tokens,
            "budget_of": self.budget_of,
            "recycle": self.recycle,
            "num_layers": self.num_layers,
            "counting": self.counting,
            "version": self.version,
            **({"scale": self.scale, "bias": self.bias} if self.version == "v1" else {}),
            "solved_fractions": (
                None if self.num_layers is None or self.scale is not None else self.stage_fractions(self.num_layers)
            ),
            **crop_order_params(self.crop_order),
            "convention": self.convention,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "convention")
        return f"SparseVLM({options})"

    def select(self, scores: list, layouts: list) -> Selection:
        return crop_order_selection(layouts, self.crop_order)

    def stages(self, num_layers: int) -> list[DecoderStage]:
        self._check_layers(num_layers)
        self._active = None if self.scale is not None else self.stage_fractions(num_layers)
        return [DecoderStage(layer, layer + 1) for layer in self.layers]  # modelling_sparse_llama: layer l's output

    def active_fractions(self) -> list[float]:
        if self._active is None:
            raise RuntimeError("sparsevlm: prune() before stages(num_layers): the schedule is fixed there")
        return self._active

    def query_rows(self, ctx: LLMContext) -> torch.Tensor:
        if ctx.stage_index == 0:
            raters = text_raters(ctx)
            length = ctx.input_embeds.shape[1]
            target = torch.where(ctx.original_index >= 0, ctx.original_index, length)
            original = torch.zeros(raters.shape[0], length + 1, dtype=torch.bool, device=raters.device)
            original.scatter_(1, target, raters)[:, -1] = False
            self._raters.store(ctx, original)
            return raters
        original = self._raters.load(ctx, "sparsevlm")
        return original.gather(1, torch.where(ctx.original_index >= 0, ctx.original_index, original.shape[1] - 1))

    def stage_counts(self, ctx: LLMContext) -> torch.Tensor:
        """[B] long k_s of this stage, before capping at the image tokens present."""
        present = ctx.image.sum(1)
        base = ctx.image_tokens_at_start if self.budget_of == "block" else torch.full_like(present, self.budget_of)
        if self.tokens is not None:
            return self.tokens[ctx.stage_index] * base // PRESET_BASE
        return (base.double() * self.active_fractions()[ctx.stage_index]).floor().long()

    @property
    def wants_query_attention(self) -> bool:
        return self.version == "v1"

    def v1_counts(self, ctx: LLMContext) -> torch.Tensor:
        """[B] long, v1's k = min(int(rank x scale + bias), n - 1), n where rank = n (no pruning); rank = the
        rank of the raters' attention rows over the image tokens present. R-driven (no ``scale``): scale =
        K / rank_0 per row, K = floor(kappa x N) and rank_0 the rank at stage 0, so k = K while the rank holds."""
        if ctx.query_attention is None:
            raise RuntimeError("sparsevlm: version=v1 needs ctx.query_attention (the raters' attention rows)")
        present = ctx.image.sum(1)
        ranks = torch.stack(
            [
                torch.linalg.matrix_rank(ctx.query_attention[b][:, ctx.image[b]].float())
                for b in range(ctx.image.shape[0])
            ]
        ).to(present)
        if self.scale is not None:
            wanted = (ranks.double() * self.scale + self.bias).floor().long()
        else:
            if ctx.stage_index == 0:
                base = (
                    ctx.image_tokens_at_start if self.budget_of == "block" else torch.full_like(present, self.budget_of)
                )
                target = (base.double() * self.active_fractions()[0]).floor().long()
                self._first_stage.store(ctx, (target, ranks.clamp(min=1)))
            target, first_rank = self._first_stage.load(ctx, "sparsevlm")
            wanted = torch.div(ranks * target, first_rank, rounding_mode="floor")
        return torch.where(ranks == present, present, torch.minimum(wanted, present - 1).clamp(min=0))

    def prune(self, ctx: LLMContext) -> PruneDecision:
        if self.version == "v1":
            counts = self.v1_counts(ctx)
            keep = keep_top_image_tokens(ctx, ctx.attention, counts)
            return self.recycle_pruned(ctx, keep)
        self.active_fractions()
        counts = torch.minimum(self.stage_counts(ctx), ctx.image.sum(1))
        return self.recycle_pruned(ctx, keep_top_image_tokens(ctx, ctx.attention, counts))

    def recycle_pruned(self, ctx: LLMContext, keep: torch.Tensor) -> PruneDecision:
        """``keep`` [B, L] plus the cluster means of the most relevant pruned image tokens (see module docstring)."""
        if not self.recycle:
            return PruneDecision(keep)
        image = ctx.image
        score = ctx.attention.float().masked_fill(~image, -torch.inf)
        pruned = image & ~keep
        orphan = pruned.any(1) & ~(image & keep).any(1)
        best = score.masked_fill(~pruned, -torch.inf).argmax(1)
        keep = keep | (orphan[:, None] & (torch.arange(keep.shape[1], device=keep.device) == best[:, None]))
        pruned = image & ~keep
        counts = pruned.sum(1).tolist()
        plan = [recycled_groups(n) for n in counts]
        widest = max(taken for taken, _ in plan)
        if widest == 0:
            return PruneDecision(keep)
        ranked = torch.sort(score.masked_fill(~pruned, -torch.inf) + 0.0, dim=1, descending=True, stable=True).indices[
            :, :widest
        ]
        seed = ctx.generator.initial_seed() if ctx.generator is not None else 0
        noise = torch.rand(widest, generator=torch.Generator().manual_seed(seed + ctx.stage_index))
        recycled = []
        for b, (taken, groups) in enumerate(plan):
            if taken == 0:
                recycled.append(ctx.hidden.new_zeros(0, ctx.hidden.shape[-1]))
                continue
            members = ctx.hidden[b, ranked[b, :taken]]
            recycled.append(dpc_knn_means(members, groups, noise[:taken]))
        return PruneDecision(keep, recycled)
