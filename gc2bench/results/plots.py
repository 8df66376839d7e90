"""Figures: which tokens a compressor kept, drawn over the image (the papers' Fig. 4 / Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

CROP_PIXELS = 224      # display size of one crop / of the thumbnail
GAP = 16
DROPPED_GREY = 200
PAD_GREY = 90


def _shade(canvas: np.ndarray, keep: np.ndarray, cell: float, colour: int, mask: np.ndarray | None = None) -> None:
    """Blend every patch cell whose ``keep`` is False (and ``mask`` True) towards ``colour``, in place."""
    rows, cols = keep.shape
    ys = np.minimum((np.arange(canvas.shape[0]) / cell).astype(int), rows - 1)
    xs = np.minimum((np.arange(canvas.shape[1]) / cell).astype(int), cols - 1)
    dropped = ~keep[ys][:, xs]
    if mask is not None:
        dropped &= mask[ys][:, xs]
    canvas[dropped] = (0.2 * canvas[dropped] + 0.8 * colour).astype(np.uint8)


def patch_sources(layout) -> np.ndarray:
    """[rows·pps, cols·pps]: for every patch of the crop grid, the source of the LLM token that
    represents it (PAD in the padding). After OneVision's downsampling a token covers several patches."""
    from gc2bench.compressors.base import PAD

    top, bottom, left, right = layout.unpadded_region()
    sources = np.full(layout.padded_size, PAD, dtype=np.int64)
    if getattr(layout, "downsampled", False):
        packed = layout.packed_grid_sources.numpy()
        ys = np.arange(bottom - top) * packed.shape[0] // max(bottom - top, 1)
        xs = np.arange(right - left) * packed.shape[1] // max(right - left, 1)
        sources[top:bottom, left:right] = packed[ys][:, xs]
    else:
        sources[top:bottom, left:right] = layout.grid_sources().numpy()[top:bottom, left:right]
    return sources


def _grid_lines(draw: ImageDraw.ImageDraw, origin: tuple[int, int], rows: int, cols: int, size: int) -> None:
    x0, y0 = origin
    for r in range(rows + 1):
        draw.line([(x0, y0 + r * size), (x0 + cols * size, y0 + r * size)], fill=(255, 255, 255), width=2)
    for c in range(cols + 1):
        draw.line([(x0 + c * size, y0), (x0 + c * size, y0 + rows * size)], fill=(255, 255, 255), width=2)


def draw_kept_tokens(image: Image.Image, layout, kept_sources: torch.Tensor, path: str | Path,
                     title: str = "") -> Path:
    """Thumbnail and crop grid side by side; discarded tokens greyed out, padding darker.

    image: the original RGB image; layout: its AnyRes layout; kept_sources: [M] token sources
    (NEWLINE entries ignored). Returns the written PNG path.
    """
    pps, n_tok = layout.patches_per_side, layout.tokens_per_view
    kept = set(int(s) for s in kept_sources.tolist() if s >= 0)
    cell = CROP_PIXELS / pps

    thumbnail = np.asarray(image.convert("RGB").resize((CROP_PIXELS, CROP_PIXELS), Image.BICUBIC)).copy()
    thumb_keep = np.array([p in kept for p in range(n_tok)]).reshape(pps, pps)
    _shade(thumbnail, thumb_keep, cell, DROPPED_GREY)

    panels = [Image.fromarray(thumbnail)]
    grid_size = None
    if layout.num_crops:
        rows, cols = layout.grid
        height, width = rows * CROP_PIXELS, cols * CROP_PIXELS
        scale = min(width / image.width, height / image.height)
        resized = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                              Image.BICUBIC)
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
        crops = np.asarray(canvas).copy()
        sources = patch_sources(layout)
        crop_keep = np.isin(sources, np.array(sorted(kept), dtype=np.int64))
        inside = sources >= 0
        _shade(crops, crop_keep | ~inside, cell, DROPPED_GREY)
        _shade(crops, inside, cell, PAD_GREY, mask=~inside)
        panels.append(Image.fromarray(crops))
        grid_size = (rows, cols)

    header = 24 if title else 0
    total_width = sum(p.width for p in panels) + GAP * (len(panels) + 1)
    total_height = max(p.height for p in panels) + 2 * GAP + header
    figure = Image.new("RGB", (total_width, total_height), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    if title:
        draw.text((GAP, GAP // 2), title, fill=(0, 0, 0))
    x = GAP
    for index, panel in enumerate(panels):
        figure.paste(panel, (x, GAP + header))
        if index == 0:
            _grid_lines(draw, (x, GAP + header), 1, 1, CROP_PIXELS)
        elif grid_size:
            _grid_lines(draw, (x, GAP + header), *grid_size, CROP_PIXELS)
        x += panel.width + GAP
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return path
