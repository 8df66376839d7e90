"""GlobalCom² (Liu et al., "Compression with Global Guidance", TCSVT; AAAI 2026): the
thumbnail commands the compression of the crops.

Defaults reproduce the authors' code (github.com/xuyang-liu16/GlobalCom2,
``llava/model/llava_arch.py``: ``compress_thumbnail``, ``generate_scale_for_crop_features``,
``compress_crops``), arithmetic included:

- thumbnail: keep the top ⌊N·R⌋ tokens by score, emitted in descending-score order;
- budgets: the thumbnail's pps×pps score map cut into the crop grid (side // grid, last cell
  takes the remainder), S_j = cell sums, σ = exp((S − max S)/τ) / (Σ exp + 1e-8),
  r_j = min(R·((1 + σ_j) − mean σ), 1), float64 as numpy sums it;
- crop j keeps the top ⌊N_j·r_j⌋ of its N_j unpadded tokens by
  α·‖global‖-normalised + (1−α)·‖local‖-normalised score, where global = the thumbnail map
  resized bilinearly (align_corners=False) to the unpadded grid and cut per crop;
- crop-side emission as their code lays it out (``crop_layout=authors``, ``newlines=padded``).

On LLaVA-OneVision (``OneVisionLayout``; AAAI paper §4.3, no authors' code) GlobalCom² is
defined as follows. Scores are ``cosine`` (−cos to the view mean, SigLIP has no CLS). The crops
are the layout's virtual crop views: crop j's N_j tokens are the tokens of the packed grid
(the unpadded grid after the ``anyres_max_n`` bilinear downsampling) attributed to it. The
thumbnail step and the budgets r_j are computed exactly as above from the thumbnail's map. Crop j
keeps the top ⌊N_j·r_j⌋ of its N_j packed tokens by α·global + (1−α)·local (each L2-normalised
over the crop), where global = the thumbnail map resized bilinearly to the packed grid (h', w')
and local = the crops' own score map over the unpadded grid resized bilinearly to (h', w'), as
transformers resizes the features (no resize where transformers does not downsample). Kept crop
tokens are emitted in transformers' packed order with one newline per packed row; ``newlines``,
``unpad`` and ``crop_layout`` reproduce LLaVA-NeXT code and do not apply.

Every choice is an option (see ``conf/compressor/globalcom2.yaml``). ``select`` is
vectorised over a batch of images of different sizes: host-side geometry is cached per
layout, the device work is a fixed sequence of tensor ops with no host–device sync (except
the optional finiteness check, one per batch).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from gc2bench.compressors.base import ScoreRequest, Selection, gather_tokens
from gc2bench.config import ConfigError, check_choice, validate_ratio
from gc2bench.layout import NEWLINE, PAD, UNPAD_ARITHMETIC, AnyResLayout, OneVisionLayout

SCORES = ("cls_logit", "cls_softmax", "cosine")
ALLOCATIONS = ("uniform", "n_topk", "softmax_max", "softmax_sum")
TOKEN_SCORES = ("local", "global", "both")
THUMBNAIL_ORDERS = ("score", "spatial")
NEWLINE_MODES = ("padded", "unpadded")
CROP_LAYOUTS = ("authors", "spatial")


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class CropGeometry:
    """Host-side geometry of one layout for the crop stage (C crops, N tokens per view).

    unpadded_size:  (H_u, W_u) patches of the unpadded region.
    token_counts:   [C] long, N_j = unpadded tokens of crop j.
    unpad_mask:     [C, N] bool, patch p of crop j lies in the unpadded region.
    cell_member:    [C, N] bool, thumbnail patch p lies in crop j's cell of the thumbnail.
    global_index:   [C, N] long, index into the flattened H_u×W_u resized thumbnail map (-1: padded).
    canvas_flag:    [L] long, per emission slot: c*N + p (crop token) or -1 (newline).
    canvas_source:  [L] long, per emission slot: its token source ((1+c)*N + p or NEWLINE).
    map_size:       (h, w) the thumbnail map is resized to and global_index points into (None: unpadded_size).
    local_source:   [H_u·W_u] long c*N + p of every unpadded-grid patch, for local scores resampled to
                    map_size like the features (OneVision anyres_max downsampling); None: scores stay per patch.
    """

    unpadded_size: tuple[int, int]
    token_counts: torch.Tensor
    unpad_mask: torch.Tensor
    cell_member: torch.Tensor
    global_index: torch.Tensor
    canvas_flag: torch.Tensor
    canvas_source: torch.Tensor
    map_size: tuple[int, int] | None = None
    local_source: torch.Tensor | None = None

    @property
    def num_newlines(self) -> int:
        return int((self.canvas_flag == -1).sum())


@lru_cache(maxsize=4096)
def crop_geometry(
    layout: AnyResLayout, unpad: str = "llava", newlines: str = "padded", crop_layout: str = "authors"
) -> CropGeometry:
    """Geometry of ``layout`` under one unpad arithmetic / newline mode / crop layout (cached).

    A ``OneVisionLayout`` has a single geometry (transformers' packing); the three modes do not apply.
    """
    if isinstance(layout, OneVisionLayout):
        return onevision_crop_geometry(layout)
    rows, cols = layout.grid
    pps, n_tok = layout.patches_per_side, layout.tokens_per_view
    top, bottom, left, right = layout.unpadded_region(unpad)
    height_u, width_u = max(bottom - top, 0), max(right - left, 0)

    # Unpadded rows [row_lo, row_hi) of each crop row and columns [col_lo, col_hi) of each crop column.
    crop_r, crop_c = torch.arange(rows), torch.arange(cols)
    row_lo = (top - crop_r * pps).clamp(0, pps)
    row_hi = (bottom - crop_r * pps).clamp(0, pps)
    col_lo = (left - crop_c * pps).clamp(0, pps)
    col_hi = (right - crop_c * pps).clamp(0, pps)
    row_h = (row_hi - row_lo).clamp(min=0)
    col_w = (col_hi - col_lo).clamp(min=0)
    counts = row_h[:, None] * col_w[None, :]  # [rows, cols]
    nonempty = counts > 0

    p = torch.arange(n_tok)
    pr, pc = p // pps, p % pps
    unpad_mask = (
        (pr >= row_lo[:, None, None])
        & (pr < row_hi[:, None, None])
        & (pc >= col_lo[None, :, None])
        & (pc < col_hi[None, :, None])
    )  # [rows, cols, N]

    member = cell_member(rows, cols, pps)

    # Where each crop's slice of the resized thumbnail map starts.
    if crop_layout == "authors":
        # compress_crops/interpolate_and_split_cls_attn_scores: columns advance by the widths of the
        # crops to the left, rows by the heights of the first crop of each row above, (0, 0) for
        # an empty crop, so an all-padding first column stops the rows from advancing.
        heights = torch.where(nonempty, row_h[:, None], 0)
        widths = torch.where(nonempty, col_w[None, :], 0)
        start_r = (heights[:, 0].cumsum(0) - heights[:, 0])[:, None].expand(rows, cols)
        start_c = widths.cumsum(1) - widths
    else:
        start_r = (crop_r * pps + row_lo - top).clamp(min=0)[:, None].expand(rows, cols)
        start_c = (crop_c * pps + col_lo - left).clamp(min=0)[None, :].expand(rows, cols)
    global_index = (
        (start_r[..., None] + pr - row_lo[:, None, None]) * width_u + start_c[..., None] + pc - col_lo[None, :, None]
    )
    global_index = torch.where(unpad_mask, global_index, -1)

    # Emission canvas [crop row i, line s, crop col j (cols = newline), slot q].
    lines = torch.full((rows,), pps) if newlines == "padded" else row_h
    s = torch.arange(pps)[None, :, None, None]
    q = torch.arange(pps)[None, None, None, :]
    i4 = crop_r[:, None, None, None]
    j4 = crop_c[None, None, :, None]
    w4 = col_w[None, None, :, None]
    if crop_layout == "authors":
        # compress_crops writes the kept token with unpadded index k into crop slot k (not its own
        # position), so a width-padded crop's rows re-wrap at pps.
        k = s * pps + q
        valid = k < counts[:, None, :, None]
        safe_w = w4.clamp(min=1)
        patch = (row_lo[:, None, None, None] + k // safe_w) * pps + col_lo[None, None, :, None] + k % safe_w
    else:
        local_row = s if newlines == "padded" else row_lo[:, None, None, None] + s
        valid = (
            (local_row >= row_lo[:, None, None, None])
            & (local_row < row_hi[:, None, None, None])
            & (q >= col_lo[None, None, :, None])
            & (q < col_hi[None, None, :, None])
        )
        patch = local_row * pps + q
    valid = valid & (s < lines[:, None, None, None])
    crop_index = i4 * cols + j4
    flag = torch.where(valid, crop_index * n_tok + patch, -2)
    source = (1 + crop_index) * n_tok + patch
    newline_valid = torch.arange(pps)[None, :] < lines[:, None]  # [rows, pps]
    flag = torch.cat([flag.expand(rows, pps, cols, pps), torch.full((rows, pps, 1, pps), -2)], dim=2)
    flag[:, :, cols, 0] = torch.where(newline_valid, -1, -2)
    source = torch.cat([source.expand(rows, pps, cols, pps), torch.full((rows, pps, 1, pps), NEWLINE)], dim=2)
    flag, source = flag.flatten(), source.flatten()
    keep = flag != -2
    return CropGeometry(
        unpadded_size=(height_u, width_u),
        token_counts=counts.flatten(),
        unpad_mask=unpad_mask.reshape(rows * cols, n_tok),
        cell_member=member,
        global_index=global_index.reshape(rows * cols, n_tok),
        canvas_flag=flag[keep],
        canvas_source=torch.where(flag[keep] == -1, NEWLINE, source[keep]),
    )


def cell_member(rows: int, cols: int, pps: int) -> torch.Tensor:
    """[rows·cols, pps²] bool: thumbnail patch p lies in crop j's cell of the thumbnail map (crop j's region)."""
    p = torch.arange(pps * pps)
    pr, pc = p // pps, p % pps
    # generate_scale_for_crop_features: cell side = max(pps // grid, 1), remainder to the last cell.
    cell_h, cell_w = max(pps // max(rows, 1), 1), max(pps // max(cols, 1), 1)
    cell_of = (pr // cell_h).clamp(max=rows - 1) * cols + (pc // cell_w).clamp(max=cols - 1)
    return cell_of[None, :] == torch.arange(rows * cols)[:, None]


def cell_sums(thumb: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """S_j [B, C] float64: thumbnail scores thumb [B, N] summed over each crop's cell (member [B, C, N] bool),
    sequentially in raster order, as the authors' Python loop accumulates them (softmax_sum's richness)."""
    return torch.where(member, thumb.double()[:, None, :], 0.0).cumsum(-1)[..., -1]


@lru_cache(maxsize=4096)
def onevision_crop_geometry(layout: OneVisionLayout) -> CropGeometry:
    """Crop-stage geometry of a OneVision layout: the crops' tokens are its virtual crop views.

    N_j = packed-grid tokens attributed to crop j; the global map is the thumbnail map resized to the
    packed grid (h', w'); emission is transformers' packed order (raster, one newline per packed row).
    """
    rows, cols = layout.grid
    n_tok, num_crops = layout.tokens_per_view, layout.num_crops
    grid = layout.packed_grid_sources.flatten() - n_tok  # c*N + p of each packed-grid token
    occupied = torch.zeros(num_crops * n_tok, dtype=torch.bool)
    occupied[grid] = True
    global_index = torch.full((num_crops * n_tok,), -1, dtype=torch.long)
    global_index[grid] = torch.arange(grid.numel())
    tail = layout.packed_sources[n_tok:]
    local_source = None
    if layout.downsampled:
        top, bottom, left, right = layout.unpadded_region()
        local_source = layout.grid_sources()[top:bottom, left:right].flatten() - n_tok
    return CropGeometry(
        unpadded_size=layout.unpadded_size,
        token_counts=occupied.view(num_crops, n_tok).sum(1),
        unpad_mask=occupied.view(num_crops, n_tok),
        cell_member=cell_member(rows, cols, layout.patches_per_side),
        global_index=global_index.view(num_crops, n_tok),
        canvas_flag=torch.where(tail == NEWLINE, -1, tail - n_tok),
        canvas_source=tail,
        map_size=layout.packed_size,
        local_source=local_source,
    )


@dataclass(frozen=True)
class _BatchGeometry:
    """Stacked geometry of B layouts (Cmax = most crops), on one device."""

    tokens_per_view: int
    patches_per_side: int
    thumb_rows: torch.Tensor  # [B] row of each thumbnail in the concatenated scores
    crop_rows: torch.Tensor  # [B, Cmax] row of each crop (padding: the thumbnail row)
    crop_valid: torch.Tensor  # [B, Cmax] bool
    crop_counts: list  # host: crops per image
    crop_count_tensor: torch.Tensor  # [B] float64, crops per image
    token_counts: torch.Tensor  # [B, Cmax] float64, N_j (0 for padding)
    token_counts_host: list  # host: per image list of N_j
    newline_counts: list  # host: per image
    unpad_mask: torch.Tensor  # [B, Cmax, N] bool
    cell_member: torch.Tensor  # [B, Cmax, N] bool
    global_index: torch.Tensor  # [B, Cmax, N] long into the concatenated resized maps (+1 zero sentinel)
    resize_groups: tuple  # ((H_u, W_u), image index tensor) per distinct unpadded size
    global_size: int  # total resized-map length before the sentinel
    canvas_flag: torch.Tensor  # [B, Lmax] long into keep [B, Cmax*N] + [True, False] sentinels
    canvas_source: torch.Tensor  # [B, Lmax] long
    local_groups: tuple = ()  # ((H_u, W_u), (h, w), sources [m, H_u*W_u] into crops.flatten(), targets [m*h*w])
    local_resampled: torch.Tensor | None = None  # [B] bool: the image's local scores come from local_groups


@lru_cache(maxsize=256)
def _batch_geometry(layouts: tuple, unpad: str, newlines: str, crop_layout: str, device: str) -> _BatchGeometry:
    geoms = [crop_geometry(layout, unpad, newlines, crop_layout) for layout in layouts]
    n_tok = layouts[0].tokens_per_view
    batch = len(layouts)
    c_max = max(layout.num_crops for layout in layouts)
    views = torch.tensor([layout.num_views for layout in layouts])
    offsets = views.cumsum(0) - views
    crop_valid = torch.arange(c_max)[None, :] < (views - 1)[:, None]
    crop_rows = torch.where(crop_valid, offsets[:, None] + 1 + torch.arange(c_max)[None, :], offsets[:, None])

    def pad_crops(t, fill):
        return torch.cat([t, t.new_full((c_max - t.shape[0], *t.shape[1:]), fill)]) if t.shape[0] < c_max else t

    sizes = [g.map_size or g.unpadded_size for g in geoms]
    groups, map_offset, total = {}, [0] * batch, 0
    for b, size in enumerate(sizes):
        groups.setdefault(size, []).append(b)
    resize_groups = []
    for size, members in groups.items():
        if size[0] * size[1] == 0:
            continue
        for rank, b in enumerate(members):
            map_offset[b] = total + rank * size[0] * size[1]
        total += len(members) * size[0] * size[1]
        resize_groups.append((size, torch.tensor(members, device=device)))
    global_index = torch.stack(
        [
            pad_crops(torch.where(g.global_index >= 0, g.global_index + map_offset[b], total), total)
            for b, g in enumerate(geoms)
        ]
    )

    local_groups = {}
    for b, g in enumerate(geoms):
        if g.local_source is not None:
            key = (g.unpadded_size, sizes[b])
            area = sizes[b][0] * sizes[b][1]
            local_groups.setdefault(key, ([], []))
            local_groups[key][0].append(b * c_max * n_tok + g.local_source)
            local_groups[key][1].append(map_offset[b] + torch.arange(area))
    local_groups = tuple(
        (key[0], key[1], torch.stack(src).to(device), torch.cat(dst).to(device))
        for key, (src, dst) in local_groups.items()
    )

    sentinel_true, sentinel_false = c_max * n_tok, c_max * n_tok + 1
    canvas_len = max(g.canvas_flag.numel() for g in geoms)
    canvas_flag = torch.full((batch, canvas_len), sentinel_false)
    canvas_source = torch.full((batch, canvas_len), PAD)
    for b, g in enumerate(geoms):
        length = g.canvas_flag.numel()
        canvas_flag[b, :length] = torch.where(g.canvas_flag == -1, sentinel_true, g.canvas_flag)
        canvas_source[b, :length] = g.canvas_source

    def dev(t):
        return t.to(device)

    return _BatchGeometry(
        tokens_per_view=n_tok,
        patches_per_side=layouts[0].patches_per_side,
        thumb_rows=dev(offsets),
        crop_rows=dev(crop_rows),
        crop_valid=dev(crop_valid),
        crop_counts=[layout.num_crops for layout in layouts],
        crop_count_tensor=dev(torch.tensor([layout.num_crops for layout in layouts], dtype=torch.float64)),
        token_counts=dev(torch.stack([pad_crops(g.token_counts, 0) for g in geoms]).double()),
        token_counts_host=[g.token_counts.tolist() for g in geoms],
        newline_counts=[g.num_newlines for g in geoms],
        unpad_mask=dev(torch.stack([pad_crops(g.unpad_mask, False) for g in geoms])),
        cell_member=dev(torch.stack([pad_crops(g.cell_member, False) for g in geoms])),
        global_index=dev(global_index),
        resize_groups=tuple(resize_groups),
        global_size=total,
        canvas_flag=dev(canvas_flag),
        canvas_source=dev(canvas_source),
        local_groups=local_groups,
        local_resampled=dev(torch.tensor([g.local_source is not None for g in geoms])) if local_groups else None,
    )


def clear_geometry_cache() -> None:
    """Forget cached geometry (for timing the uncached path)."""
    crop_geometry.cache_clear()
    onevision_crop_geometry.cache_clear()
    _batch_geometry.cache_clear()


# ----------------------------------------------------------------------------- numerics


def _pairwise_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums of x [G, n] in numpy's pairwise order (``pairwise_sum`` in numpy's loops)."""
    n = x.shape[1]
    if n < 8:
        return x.cumsum(1)[:, -1] if n else x.new_zeros(x.shape[0])
    if n <= 128:
        m = n - n % 8
        acc = x[:, :m].reshape(x.shape[0], m // 8, 8).cumsum(1)[:, -1]
        tree = ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))
        return torch.cat([tree[:, None], x[:, m:]], dim=1).cumsum(1)[:, -1]
    half = n // 2
    half -= half % 8
    return _pairwise_sum(x[:, :half]) + _pairwise_sum(x[:, half:])


def _numpy_row_sum(x: torch.Tensor, counts: list) -> torch.Tensor:
    """Row sums of x [B, K] over each row's first ``counts[b]`` entries (the rest are 0), as np.sum."""
    if max(counts) < 8:
        return x.cumsum(1)[:, -1]  # numpy adds fewer than 8 values left to right; trailing zeros are exact
    out = x.new_empty(x.shape[0])
    for n in sorted(set(counts)):
        rows = [b for b, c in enumerate(counts) if c == n]
        index = torch.tensor(rows, device=x.device)
        out[index] = _pairwise_sum(x[index, :n])
    return out


# ----------------------------------------------------------------------------- compressor


def _real(value, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"globalcom2: {option}={value!r} is not a finite number")
    return float(value)


class GlobalCom2:
    """GlobalCom² selection for a batch of AnyRes images (see module docstring).

    ratio: base retention R in (0, 1]; applied to unpadded packed tokens, newlines not counted.
    score: which per-view score the adapter computes (``cls_logit``: head-mean pre-softmax CLS
        logits of the last ViT layer, the authors' code; ``cls_softmax``: the paper's Eq. 1;
        ``cosine``: −cos(x_i, mean x) for encoders without CLS, AAAI §4.3).
    tau, alpha: Eq. 3 temperature and Eq. 8 global weight.
    allocation: per-crop budgets (TCSVT Table III): ``uniform`` (r_j = R), ``n_topk`` (σ_j =
        share of the thumbnail's kept tokens in crop j's cell), ``softmax_max`` (softmax of
        cell maxima), ``softmax_sum`` (softmax of cell sums).
    token_score: crop token ranking (Table IV): ``local``, ``global`` or ``both``.
    thumbnail_order: kept thumbnail tokens in ``score`` (descending) or ``spatial`` order.
    newlines: ``padded`` (one per row of the whole crop grid, authors) or ``unpadded`` (one per
        unpadded row, transformers). LLaVA-NeXT layouts only, as are ``unpad`` and ``crop_layout``.
    unpad: unpadded-extent arithmetic, ``llava`` (``int(x)``, authors) or ``transformers``.
    crop_layout: ``authors`` (kept crop tokens in the slots compress_crops writes them to) or
        ``spatial`` (their true positions, raster order over the grid).
    check_finite: reject NaN/inf scores (one host–device sync per batch).
    """

    kind = "vision"
    seed = 0
    convention = (
        "R applies to unpadded packed tokens (thumbnail keeps floor(N*R), crop j keeps floor(N_j*r_j) of "
        "its N_j unpadded tokens); newlines not counted"
    )

    def __init__(
        self,
        ratio: float = 0.25,
        name: str = "globalcom2",
        score: str = "cls_logit",
        tau: float = 10.0,
        alpha: float = 0.5,
        allocation: str = "softmax_sum",
        token_score: str = "both",
        thumbnail_order: str = "score",
        newlines: str = "padded",
        unpad: str = "llava",
        crop_layout: str = "authors",
        check_finite: bool = True,
    ):
        self.ratio = validate_ratio(_real(ratio, "ratio"))  # a number (not text), then config's range check
        self.name = str(name)
        self.score = check_choice(score, SCORES, "score", "globalcom2")
        self.tau = _real(tau, "tau")
        if self.tau <= 0:
            raise ConfigError(f"globalcom2: tau={tau!r} must be > 0")
        self.alpha = _real(alpha, "alpha")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"globalcom2: alpha={alpha!r} is outside [0, 1]")
        self.allocation = check_choice(allocation, ALLOCATIONS, "allocation", "globalcom2")
        self.token_score = check_choice(token_score, TOKEN_SCORES, "token_score", "globalcom2")
        self.thumbnail_order = check_choice(thumbnail_order, THUMBNAIL_ORDERS, "thumbnail_order", "globalcom2")
        self.newlines = check_choice(newlines, NEWLINE_MODES, "newlines", "globalcom2")
        self.unpad = check_choice(unpad, UNPAD_ARITHMETIC, "unpad", "globalcom2")
        self.crop_layout = check_choice(crop_layout, CROP_LAYOUTS, "crop_layout", "globalcom2")
        self.check_finite = bool(check_finite)
        self.score_request = ScoreRequest(self.score, -1)

    def params(self) -> dict:
        return {
            "name": self.name,
            "ratio": self.ratio,
            "score": self.score,
            "tau": self.tau,
            "alpha": self.alpha,
            "allocation": self.allocation,
            "token_score": self.token_score,
            "thumbnail_order": self.thumbnail_order,
            "newlines": self.newlines,
            "unpad": self.unpad,
            "crop_layout": self.crop_layout,
            "check_finite": self.check_finite,
            "convention": self.convention,
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "convention")
        return f"GlobalCom2({options})"

    # -- validation -----------------------------------------------------------------------------

    def _validate(self, scores: list, layouts: list) -> None:
        if len(scores) != len(layouts) or not layouts:
            raise ValueError(
                f"globalcom2: got {len(scores)} score tensors for {len(layouts)} layouts "
                "(need one per image, at least one image)"
            )
        for b, (s, layout) in enumerate(zip(scores, layouts)):
            if not isinstance(layout, (AnyResLayout, OneVisionLayout)):
                raise TypeError(
                    f"globalcom2: image {b}: layout is {type(layout).__name__}, not AnyResLayout or OneVisionLayout"
                )
            expected = (layout.num_views, layout.tokens_per_view)
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != expected:
                shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(
                    f"globalcom2: image {b}: scores have shape {shape}, but its layout ({layout.image_size[0]}x"
                    f"{layout.image_size[1]} px, grid {layout.grid[0]}x{layout.grid[1]}, "
                    f"{layout.patches_per_side}x{layout.patches_per_side} patches) needs {expected} "
                    "(views x patches)"
                )
            if not s.is_floating_point():
                raise ValueError(f"globalcom2: image {b}: scores must be floating point, got {s.dtype}")
        if len({type(layout) for layout in layouts}) > 1:
            raise TypeError("globalcom2: a batch mixes AnyResLayout and OneVisionLayout images")
        if len({layout.tokens_per_view for layout in layouts}) > 1:
            raise ValueError(
                "globalcom2: all images of a batch must have the same patches_per_side, got "
                f"{sorted({layout.patches_per_side for layout in layouts})}"
            )

    @staticmethod
    def _check_finite(flat: torch.Tensor, scores: list) -> None:
        if bool(torch.isfinite(flat).all()):
            return
        for b, s in enumerate(scores):
            bad = ~torch.isfinite(s)
            if bool(bad.any()):
                views = sorted(set(bad.nonzero()[:, 0].tolist()))
                raise ValueError(
                    f"globalcom2: image {b}: scores contain {int(torch.isnan(s).sum())} NaN and "
                    f"{int(torch.isinf(s).sum())} inf values (views {views})"
                )

    # -- selection ------------------------------------------------------------------------------

    def select(self, scores: list, layouts: list) -> Selection:
        """Kept tokens for B images.

        scores: B tensors [V_b, N] (view 0 thumbnail, then crops row-major); layouts: B AnyResLayout.
        Returns token_sources [B, P] (thumbnail part, then crop part with NEWLINE entries; PAD
        after num_tokens[b], P an upper bound), crop_budgets [B, Cmax] float64 r_j (NaN-padded),
        info: thumbnail_keep_count (int), crop_keep_counts [B, Cmax], crop_token_counts [B, Cmax].
        """
        self._validate(scores, layouts)
        flat = scores[0].float() if len(scores) == 1 else torch.cat([s.float() for s in scores])
        if self.check_finite:
            self._check_finite(flat, scores)
        device = flat.device
        geo = _batch_geometry(tuple(layouts), self.unpad, self.newlines, self.crop_layout, str(device))
        n_tok, pps = geo.tokens_per_view, geo.patches_per_side
        batch = len(layouts)
        ratio = self.ratio

        thumb = flat[geo.thumb_rows]  # [B, N]
        crops = flat[geo.crop_rows]  # [B, Cmax, N]

        # Thumbnail: top ⌊N·R⌋, ties to the lower index (+ 0.0 turns -0.0 into 0.0: GPU radix sorts tell them apart).
        keep_thumb = int(n_tok * ratio)
        thumb_order = torch.sort(thumb + 0.0, dim=1, descending=True, stable=True).indices[:, :keep_thumb]
        thumb_sources = thumb_order if self.thumbnail_order == "score" else thumb_order.sort(dim=1).values

        budgets = self._crop_budgets(thumb, thumb_order, geo)  # [B, Cmax] float64, NaN padding
        keep_counts = torch.nan_to_num(geo.token_counts * budgets, nan=0.0).floor().long()

        # Crop token scores over the unpadded tokens.
        combined = self._crop_token_scores(thumb, crops, geo, pps)
        order = torch.sort(combined + 0.0, dim=-1, descending=True, stable=True).indices
        ranks_kept = torch.arange(n_tok, device=device) < keep_counts[..., None]
        keep = torch.zeros_like(ranks_kept).scatter_(-1, order, ranks_kept)  # [B, Cmax, N]

        # Emission: thumbnail, then the canvas slots whose token is kept (newlines always).
        keep_ext = torch.cat([keep.flatten(1), keep.new_ones(batch, 1), keep.new_zeros(batch, 1)], dim=1)
        slot_kept = keep_ext.gather(1, geo.canvas_flag)
        position = slot_kept.cumsum(1) - 1 + keep_thumb
        width = self._max_tokens(keep_thumb, geo)
        target = torch.where(slot_kept, position, width)
        token_sources = torch.full((batch, width + 1), PAD, dtype=torch.long, device=device)
        token_sources.scatter_(1, target, geo.canvas_source)
        token_sources[:, :keep_thumb] = thumb_sources
        num_tokens = keep_thumb + slot_kept.sum(1)
        info = {
            "thumbnail_keep_count": keep_thumb,
            "crop_keep_counts": keep_counts,
            "crop_token_counts": geo.token_counts.long(),
        }
        return Selection(token_sources[:, :width], num_tokens, budgets, info)

    def _max_tokens(self, keep_thumb: int, geo: _BatchGeometry) -> int:
        """Upper bound on emitted tokens (r_j ≤ min(1, 2R) for every allocation)."""
        cap = min(1.0, 2.0 * self.ratio)
        return keep_thumb + max(
            sum(min(n, math.floor(n * cap)) for n in counts) + newlines
            for counts, newlines in zip(geo.token_counts_host, geo.newline_counts)
        )

    def _crop_budgets(self, thumb: torch.Tensor, thumb_order: torch.Tensor, geo: _BatchGeometry) -> torch.Tensor:
        """r_j [B, Cmax] float64 (NaN for padding), as generate_scale_for_crop_features computes it."""
        valid = geo.crop_valid
        if valid.shape[1] == 0:  # OneVision base-only images (multi-image prompts) have no crops
            return torch.empty(valid.shape, dtype=torch.float64, device=thumb.device)
        if self.allocation == "uniform":
            budgets = torch.full(valid.shape, self.ratio, dtype=torch.float64, device=thumb.device)
            return budgets.masked_fill(~valid, math.nan)
        if self.allocation == "n_topk":
            # TCSVT §IV-C a): σ_j = share of the thumbnail's top-k tokens in crop j's cell (k = ⌊N·R⌋).
            kept = torch.zeros_like(thumb, dtype=torch.bool).scatter_(1, thumb_order, True)
            hits = (geo.cell_member & kept[:, None, :]).sum(-1).double()
            sigma = hits / max(thumb_order.shape[1], 1)
        else:
            if self.allocation == "softmax_sum":
                cell = cell_sums(thumb, geo.cell_member)
            else:
                cell = torch.where(geo.cell_member, thumb.double()[:, None, :], -math.inf).amax(-1)
            cell = cell.masked_fill(~valid, -math.inf)
            shifted = (cell - cell.amax(1, keepdim=True)) / self.tau
            weights = torch.exp(shifted).masked_fill(~valid, 0.0)
            sigma = weights / (_numpy_row_sum(weights, geo.crop_counts) + 1e-8)[:, None]
        sigma = sigma.masked_fill(~valid, 0.0)
        mean = _numpy_row_sum(sigma, geo.crop_counts) / geo.crop_count_tensor
        # Eq. 5 as their numpy evaluates it; Eq. 6's γ is 1 up to rounding and their code omits it.
        budgets = (self.ratio * ((1.0 + sigma) - mean[:, None])).clamp(max=1.0)
        return budgets.masked_fill(~valid, math.nan)

    def _crop_token_scores(self, thumb, crops, geo: _BatchGeometry, pps: int) -> torch.Tensor:
        """Combined token scores [B, Cmax, N] (-inf on padded tokens)."""
        mask = geo.unpad_mask
        parts = []
        if self.token_score in ("global", "both"):
            maps = [
                F.interpolate(
                    thumb[members].view(-1, 1, pps, pps), size=size, mode="bilinear", align_corners=False
                ).flatten()
                for size, members in geo.resize_groups
            ]
            resized = torch.cat(maps + [thumb.new_zeros(1)])
            parts.append(F.normalize(resized[geo.global_index], p=2, dim=-1))
        if self.token_score in ("local", "both"):
            if geo.local_groups:
                crops = self._resampled_local_scores(crops, geo)
            parts.append(F.normalize(torch.where(mask, crops, 0.0), p=2, dim=-1))
        if self.token_score == "both":
            combined = self.alpha * parts[0] + (1.0 - self.alpha) * parts[1]
        else:
            combined = parts[0]
        return combined.masked_fill(~mask, -math.inf)

    @staticmethod
    def _resampled_local_scores(crops: torch.Tensor, geo: _BatchGeometry) -> torch.Tensor:
        """[B, Cmax, N] local scores of OneVision virtual crop views: each downsampled image's crop score map
        over the unpadded grid, bilinearly resized to the packed grid as transformers resizes the features."""
        flat = crops.flatten()
        resized = crops.new_zeros(geo.global_size + 1)
        for size, packed_size, sources, targets in geo.local_groups:
            maps = flat[sources].view(-1, 1, *size)
            resized[targets] = F.interpolate(maps, size=packed_size, mode="bilinear", align_corners=False).flatten()
        return torch.where(geo.local_resampled[:, None, None], resized[geo.global_index], crops)

    # -- convenience ----------------------------------------------------------------------------

    def compress(self, view_features: list, image_newline: torch.Tensor, scores: list, layouts: list):
        """Compressed LLM inputs: B tensors [M_b, D] from view_features (B tensors [V_b, N, D]), and the Selection."""
        if len(view_features) != len(layouts):
            raise ValueError(f"globalcom2: got {len(view_features)} feature tensors for {len(layouts)} layouts")
        for b, (f, layout) in enumerate(zip(view_features, layouts)):
            if f.ndim != 3 or tuple(f.shape[:2]) != (layout.num_views, layout.tokens_per_view):
                raise ValueError(
                    f"globalcom2: image {b}: features have shape {tuple(f.shape)}, but its layout "
                    f"needs [{layout.num_views}, {layout.tokens_per_view}, D] (views x patches x dim)"
                )
            if image_newline.shape != f.shape[2:]:
                raise ValueError(
                    f"globalcom2: image_newline has shape {tuple(image_newline.shape)}, "
                    f"features of image {b} have D={f.shape[2]}"
                )
        if any(isinstance(layout, OneVisionLayout) and layout.downsampled for layout in layouts):
            raise ValueError(
                "globalcom2: compress() gathers view features, but a downsampled OneVision image's "
                "tokens are built from its packed grid: use LlavaOneVisionAdapter.pack"
            )
        selection = self.select(scores, layouts)
        packed = [gather_tokens(f, image_newline, s) for f, s in zip(view_features, selection.per_image())]
        return packed, selection
