"""AnyRes geometry of one image: grid choice, unpadded region, packed token sources.

Conventions:

- Sizes are (height, width), as transformers' ``image_sizes``; the original LLaVA code (and
  the GlobalCom² authors' code built on it) passes (width, height) — convert before calling.
- A layout has ``1 + rows * cols`` views (view 0 = thumbnail, then crops row-major), each
  ``patches_per_side ** 2`` tokens. The crop grid is ``rows * pps`` patches high and
  ``cols * pps`` wide; the *unpadded region* is the part of it showing the image.
- A *token source* names where an emitted LLM token comes from: ``v * N + p`` for patch ``p``
  (row-major inside the view) of view ``v``, and ``NEWLINE`` (-1) for the model's ``image_newline``
  embedding. The packed sequence transformers builds (``pack_image_features``) is one such list
  (``packed_sources``); a compressor returns another, shorter one. Padding entries in batched source
  tensors are ``PAD`` (-2) and always come last. A merging compressor may also emit *view summaries*:
  source ``VIEW_SUMMARY - v`` (-3 - v) is a token with no patch of its own that summarises view ``v``.

LLaVA-OneVision (``OneVisionLayout``, ``onevision_layout``) packs the same AnyRes grid with
transformers' unpad arithmetic, then bilinearly downsamples it (``anyres_max_n``); its crop views
are *virtual*: see ``OneVisionLayout``.

Two places where implementations differ (both handled, see ``select_grid`` and
``unpadded_region``; ``model.pipeline`` chooses one set of rules for the whole run, ``layout_for``):

- Grid pinpoints are (height, width) in transformers and (width, height) in LLaVA; lists are
  usually symmetric, so only ties change (a 336×336 image gets 2 crops side by side in
  transformers, stacked in LLaVA).
- The unpadded extent is ``int(round(x, 7))`` in transformers and ``int(x)`` in LLaVA's
  ``unpad_image`` (what the GlobalCom² authors use); they differ when ``x`` lands just below
  an integer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch

NEWLINE = -1
PAD = -2
VIEW_SUMMARY = -3  # VIEW_SUMMARY - v: a summary token of view v (see the module docstring)

UNPAD_ARITHMETIC = ("transformers", "llava")
PINPOINT_ORDERS = ("hw", "wh")
# model.pipeline: whose AnyRes rules lay an image out — transformers' (pinpoints (height, width),
# ``int(round(x, 7))`` unpadding) or the original LLaVA code's (llava/mm_utils.py select_best_resolution
# reads pinpoints as (width, height); llava_arch.py unpad_image truncates with ``int()``).
PIPELINES = ("transformers", "llava")
PIPELINE_RULES = {
    "transformers": {"pinpoint_order": "hw", "unpad": "transformers"},
    "llava": {"pinpoint_order": "wh", "unpad": "llava"},
}


def source_views(token_sources: torch.Tensor, tokens_per_view: int) -> torch.Tensor:
    """View of each patch or view-summary source (no NEWLINE / PAD entries): [M] → [M] long."""
    return torch.where(
        token_sources <= VIEW_SUMMARY,
        VIEW_SUMMARY - token_sources,
        token_sources.div(tokens_per_view, rounding_mode="floor"),
    )


def check_pipeline(pipeline: str) -> str:
    if pipeline not in PIPELINES:
        raise ValueError(f"model.pipeline={pipeline!r}: expected one of {PIPELINES}")
    return pipeline


def select_best_resolution(image_size_hw: tuple[int, int], pinpoints_hw) -> tuple[int, int]:
    """The pinpoint (height, width) that keeps the most image pixels, then wastes the fewest.

    Same rule as transformers' and LLaVA's ``select_best_resolution``; the first pinpoint in
    list order wins a tie.
    """
    height, width = image_size_hw
    best, best_effective, best_wasted = None, 0, float("inf")
    for pin_h, pin_w in pinpoints_hw:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (pin_h, pin_w), effective, wasted
    return best


def select_grid(image_size_hw, grid_pinpoints, crop_size: int, pinpoint_order: str = "hw") -> tuple[int, int]:
    """(rows, cols) of crops chosen for an image; ``pinpoint_order`` says how pinpoints are written."""
    if pinpoint_order not in PINPOINT_ORDERS:
        raise ValueError(f"pinpoint_order={pinpoint_order!r}: expected one of {PINPOINT_ORDERS}")
    pins = [(int(a), int(b)) if pinpoint_order == "hw" else (int(b), int(a)) for a, b in grid_pinpoints]
    if not pins:
        raise ValueError("grid_pinpoints is empty")
    pin_h, pin_w = select_best_resolution(image_size_hw, pins)
    return pin_h // crop_size, pin_w // crop_size


def unpadded_region(
    image_size_hw, grid: tuple[int, int], patches_per_side: int, arithmetic: str = "transformers"
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), half-open, of the image inside the crop grid, in patches.

    ``arithmetic``: ``transformers`` (``int(round(x, 7))``) or ``llava`` (``int(x)``).
    """
    if arithmetic not in UNPAD_ARITHMETIC:
        raise ValueError(f"unpad={arithmetic!r}: expected one of {UNPAD_ARITHMETIC}")
    height, width = image_size_hw
    grid_h, grid_w = grid[0] * patches_per_side, grid[1] * patches_per_side
    to_int = (lambda x: int(round(x, 7))) if arithmetic == "transformers" else int
    if width / height > grid_w / grid_h:
        new_h = to_int(height * (grid_w / width))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = to_int(width * (grid_h / height))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


class CropGrid:
    """What every layout shares: a thumbnail view, then ``grid`` crops of ``patches_per_side``² patch tokens."""

    image_size: tuple[int, int]
    grid: tuple[int, int]
    patches_per_side: int

    @property
    def num_crops(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_views(self) -> int:
        return 1 + self.num_crops

    @property
    def tokens_per_view(self) -> int:
        return self.patches_per_side**2

    @property
    def padded_size(self) -> tuple[int, int]:
        """(rows, cols) of patches in the whole crop grid ((0, 0) for a base-only image)."""
        return self.grid[0] * self.patches_per_side, self.grid[1] * self.patches_per_side

    def grid_sources(self) -> torch.Tensor:
        """[rows*pps, cols*pps] long: the token source of every patch of the crop grid (before unpadding)."""
        pps, cols = self.patches_per_side, self.grid[1]
        r = torch.arange(self.padded_size[0])[:, None]
        c = torch.arange(self.padded_size[1])[None, :]
        view = 1 + (r // pps) * cols + c // pps
        return view * self.tokens_per_view + (r % pps) * pps + c % pps


@dataclass(frozen=True)
class AnyResLayout(CropGrid):
    """Geometry of one AnyRes image.

    image_size: (height, width) in pixels; grid: (rows, cols) of crops; crop_size: crop side
    in pixels (informational, None if unknown); unpad: the pipeline's unpadding arithmetic,
    which ``packed_sources`` (what the LLM is fed uncompressed) and ``unpadded_region()`` use.
    """

    image_size: tuple[int, int]
    grid: tuple[int, int]
    patches_per_side: int
    crop_size: int | None = None
    unpad: str = "transformers"

    def __post_init__(self):
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size={self.image_size}: height and width must be >= 1")
        if self.grid[0] < 1 or self.grid[1] < 1:
            raise ValueError(f"grid={self.grid}: rows and cols must be >= 1")
        if self.patches_per_side < 1:
            raise ValueError(f"patches_per_side={self.patches_per_side} must be >= 1")
        if self.unpad not in UNPAD_ARITHMETIC:
            raise ValueError(f"unpad={self.unpad!r}: expected one of {UNPAD_ARITHMETIC}")

    def unpadded_region(self, arithmetic: str | None = None) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) in grid patches; see module ``unpadded_region`` (None: ``self.unpad``)."""
        return unpadded_region(self.image_size, self.grid, self.patches_per_side, arithmetic or self.unpad)

    def sources(self, arithmetic: str | None = None, newlines: str = "unpadded") -> torch.Tensor:
        """[P] long: thumbnail then unpadded crop grid row by row, each row followed by NEWLINE.

        ``newlines``: ``unpadded`` (one per unpadded row, transformers) or ``padded`` (one per
        row of the whole grid, as the GlobalCom² authors' code emits them).
        """
        top, bottom, left, right = self.unpadded_region(arithmetic)
        body = self.grid_sources()[top:bottom, left:right]
        rows = torch.cat([body, torch.full((body.shape[0], 1), NEWLINE)], dim=1).flatten()
        if newlines == "padded":
            rows = torch.cat([torch.full((top,), NEWLINE), rows, torch.full((self.padded_size[0] - bottom,), NEWLINE)])
        elif newlines != "unpadded":
            raise ValueError(f"newlines={newlines!r}: expected 'unpadded' or 'padded'")
        return torch.cat([torch.arange(self.tokens_per_view), rows])

    @cached_property
    def packed_sources(self) -> torch.Tensor:
        """[P] long: the pipeline's packing (transformers' ``pack_image_features`` order, one newline per
        unpadded row; the unpadded extent by ``self.unpad``)."""
        return self.sources(self.unpad, "unpadded")


def anyres_layout(
    image_size_hw,
    grid_pinpoints,
    crop_size: int,
    patches_per_side: int,
    pinpoint_order: str = "hw",
    unpad: str = "transformers",
) -> AnyResLayout:
    """Layout of an image of ``image_size_hw`` (height, width) under AnyRes with these pinpoints.

    ``pinpoint_order``: ``hw`` (transformers configs and processors) or ``wh`` (LLaVA's own code);
    ``unpad``: the arithmetic of the layout's packing.
    """
    size = (int(image_size_hw[0]), int(image_size_hw[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"image_size={size}: height and width must be >= 1")
    grid = select_grid(size, grid_pinpoints, crop_size, pinpoint_order)
    return AnyResLayout(size, grid, int(patches_per_side), int(crop_size), unpad)


def layout_for(config, image_size_hw, pipeline: str = "transformers") -> AnyResLayout:
    """Layout for a transformers ``LlavaNextConfig`` (reads ``image_grid_pinpoints``,
    ``vision_config.image_size`` and ``vision_config.patch_size``) under ``pipeline``'s rules
    (``PIPELINE_RULES``: transformers' or the original LLaVA code's)."""
    rules = PIPELINE_RULES[check_pipeline(pipeline)]
    crop = int(config.vision_config.image_size)
    return anyres_layout(
        image_size_hw,
        config.image_grid_pinpoints,
        crop,
        crop // int(config.vision_config.patch_size),
        rules["pinpoint_order"],
        rules["unpad"],
    )


def pipeline_pinpoints_hw(grid_pinpoints, pipeline: str) -> list[list[int]]:
    """The pinpoints as (height, width) pairs under ``pipeline``: what a transformers image processor must be
    given so that it chooses the grid that pipeline chooses (LLaVA reads each listed pair as (width, height))."""
    order = PIPELINE_RULES[check_pipeline(pipeline)]["pinpoint_order"]
    return [[int(a), int(b)] if order == "hw" else [int(b), int(a)] for a, b in grid_pinpoints]


# ----------------------------------------------------------------------------- LLaVA-OneVision

ANYRES_MAX_THRESHOLD = 1.1  # transformers' pack_image_features downsamples only when ratio > 1.1


def parse_anyres_max(vision_aspect_ratio: str) -> int:
    """The 9 of ``anyres_max_9`` (the only aspect-ratio mode transformers' OneVision packing accepts)."""
    match = re.fullmatch(r"anyres_max_(\d+)", str(vision_aspect_ratio))
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"vision_aspect_ratio={vision_aspect_ratio!r}: expected 'anyres_max_<n>' with n >= 1")
    return int(match.group(1))


@dataclass(frozen=True)
class OneVisionLayout(CropGrid):
    """Geometry of one LLaVA-OneVision image, as transformers' ``pack_image_features`` lays it out.

    image_size: (height, width) in pixels; grid: (rows, cols) of crops, ``(0, 0)`` for an image
    given as its base view only (transformers does this for each image of a prompt with several
    images: one view, then one newline); patches_per_side: pps of every view; crop_size: crop
    side in pixels (informational); anyres_max: the n of ``anyres_max_n``.

    The packed grid is the unpadded crop grid (``int(round(x, 7))`` arithmetic), bilinearly
    downsampled to ``packed_size`` when ``sqrt(H_u·W_u / (n·pps²)) > 1.1``. Its token (i, k) is
    attributed to a *virtual crop view*: the crop-grid patch (y, x) holding its sampling centre,
    y = top + ⌊(2i+1)·H_u / (2h')⌋, x = left + ⌊(2k+1)·W_u / (2w')⌋ (of the two bilinear
    neighbours along each axis, the one with the larger weight; the later one on a tie), so its token source is
    ``(1 + crop(y, x))·N + patch(y, x)``. Without downsampling this is the patch itself. Slots
    of a crop view that hold no packed token never appear in ``packed_sources``.
    """

    image_size: tuple[int, int]
    grid: tuple[int, int]
    patches_per_side: int
    crop_size: int | None = None
    anyres_max: int = 9

    def __post_init__(self):
        h, w = self.image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size={self.image_size}: height and width must be >= 1")
        rows, cols = self.grid
        if not ((rows >= 1 and cols >= 1) or rows == cols == 0):
            raise ValueError(f"grid={self.grid}: rows and cols must be >= 1 (or both 0 for a base-only image)")
        if self.patches_per_side < 1:
            raise ValueError(f"patches_per_side={self.patches_per_side} must be >= 1")
        if self.anyres_max < 1:
            raise ValueError(f"anyres_max={self.anyres_max} must be >= 1")

    def unpadded_region(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) in grid patches, transformers' arithmetic; zeros for a base-only image."""
        if self.num_crops == 0:
            return 0, 0, 0, 0
        return unpadded_region(self.image_size, self.grid, self.patches_per_side, "transformers")

    @property
    def unpadded_size(self) -> tuple[int, int]:
        top, bottom, left, right = self.unpadded_region()
        return bottom - top, right - left

    @cached_property
    def packed_size(self) -> tuple[int, int]:
        """(h', w') of the packed crop grid: the unpadded size, or its anyres_max downsampling."""
        height, width = self.unpadded_size
        # transformers LlavaOnevisionModel.pack_image_features: same float arithmetic.
        ratio = math.sqrt(height * width / (self.anyres_max * self.patches_per_side**2))
        if ratio > ANYRES_MAX_THRESHOLD:
            return int(height // ratio), int(width // ratio)
        return height, width

    @property
    def downsampled(self) -> bool:
        return self.packed_size != self.unpadded_size

    @cached_property
    def packed_grid_sources(self) -> torch.Tensor:
        """[h', w'] long: the token source of every token of the packed crop grid (virtual crop views)."""
        (height, width), (out_h, out_w) = self.unpadded_size, self.packed_size
        top, _, left, _ = self.unpadded_region()
        pps, cols = self.patches_per_side, max(self.grid[1], 1)
        y = top + (2 * torch.arange(out_h) + 1) * height // (2 * out_h) if out_h else torch.zeros(0, dtype=torch.long)
        x = left + (2 * torch.arange(out_w) + 1) * width // (2 * out_w) if out_w else torch.zeros(0, dtype=torch.long)
        y, x = y[:, None], x[None, :]
        view = 1 + (y // pps) * cols + x // pps
        return view * self.tokens_per_view + (y % pps) * pps + x % pps

    @cached_property
    def packed_sources(self) -> torch.Tensor:
        """[P] long: thumbnail, then the packed grid row by row, each row followed by NEWLINE (transformers' order).

        A base-only image is its view then one NEWLINE.
        """
        thumbnail = torch.arange(self.tokens_per_view)
        if self.num_crops == 0:
            return torch.cat([thumbnail, torch.tensor([NEWLINE])])
        body = self.packed_grid_sources
        rows = torch.cat([body, torch.full((body.shape[0], 1), NEWLINE)], dim=1).flatten()
        return torch.cat([thumbnail, rows])

    @cached_property
    def source_rows(self) -> torch.Tensor:
        """[V·N] long: row of each token source in [thumbnail tokens; packed grid tokens row-major]; -1: no token."""
        n_tok = self.tokens_per_view
        rows = torch.full((self.num_views * n_tok,), -1, dtype=torch.long)
        rows[:n_tok] = torch.arange(n_tok)
        grid = self.packed_grid_sources.flatten()
        rows[grid] = n_tok + torch.arange(grid.numel())
        return rows


def onevision_layout(config, image_size_hw, anyres: bool = True) -> OneVisionLayout:
    """Layout for a transformers ``LlavaOnevisionConfig`` (pinpoints, crop and patch size, vision_aspect_ratio).

    ``anyres=False``: the image is given as its base view only (an image of a multi-image prompt).
    """
    size = (int(image_size_hw[0]), int(image_size_hw[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"image_size={size}: height and width must be >= 1")
    crop = int(config.vision_config.image_size)
    pps = crop // int(config.vision_config.patch_size)
    grid = select_grid(size, config.image_grid_pinpoints, crop, "hw") if anyres else (0, 0)
    return OneVisionLayout(size, grid, pps, crop, parse_anyres_max(config.vision_aspect_ratio))
