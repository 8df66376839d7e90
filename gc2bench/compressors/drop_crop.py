"""Crop dropping (GlobalCom² AAAI paper, §3.2 (II) and Fig. 3): drop the whole most / least important crop.

A crop's importance is GlobalCom²'s richness score: the thumbnail's per-patch score (``cls_logit`` by
default, head-mean pre-softmax CLS logits of the last ViT layer, as GlobalCom²'s default) summed
over the crop's cell of the thumbnail map (``globalcom2.cell_member`` / ``cell_sums``; the paper:
"the sum of partitioned attention scores within each crop region"). ``which=most`` drops the crop
with the highest sum, ``which=least`` the lowest (ties: the lower crop index). Everything else stays
as transformers packs it: the thumbnail, the other crops' unpadded tokens, their newlines.

Newlines (the paper does not say): ``newlines=rows`` (default) also drops the newline of every packed
row the dropped crop emptied (a one-column grid loses the crop's rows with their newlines, as if the
grid had no such row); ``keep`` keeps every newline transformers packs. Rows shared with another
crop keep their newline either way. An image without crops (a LLaVA-OneVision image of a
multi-image prompt) keeps everything. On LLaVA-OneVision the crops are the layout's virtual crop
views (the packed tokens attributed to each crop), and SigLIP has no CLS: use ``score=cosine``.

Not ratio-driven: ``ratio`` is ignored and params() report 1.0, so a sweep over ratios runs each
variant once. The selection's ``crop_budgets`` are 1 for kept crops and 0 for the dropped one, so
every sample's record names the crop that went.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from gc2bench.compressors.base import ScoreRequest, Selection
from gc2bench.compressors.globalcom2 import SCORES, cell_member, cell_sums
from gc2bench.config import check_choice
from gc2bench.layout import NEWLINE, PAD

WHICH = ("most", "least")
NEWLINE_MODES = ("rows", "keep")


@lru_cache(maxsize=256)
def _batch_geometry(layouts: tuple, device: str) -> tuple:
    """(member [B, Cmax, N] bool crop cells, valid [B, Cmax] bool, sources [B, P] packed sources PAD-padded)."""
    n_tok = layouts[0].tokens_per_view
    c_max = max(layout.num_crops for layout in layouts)
    member = torch.zeros(len(layouts), c_max, n_tok, dtype=torch.bool)
    for b, layout in enumerate(layouts):
        member[b, : layout.num_crops] = cell_member(*layout.grid, layout.patches_per_side)
    valid = torch.arange(c_max)[None, :] < torch.tensor([layout.num_crops for layout in layouts])[:, None]
    sources = torch.nn.utils.rnn.pad_sequence(
        [layout.packed_sources for layout in layouts], batch_first=True, padding_value=PAD
    )
    return member.to(device), valid.to(device), sources.to(device)


class DropCrop:
    """Drop the crop with the highest (``most``) or lowest (``least``) summed thumbnail score (module docstring).

    which: ``most`` | ``least``; score: ``cls_logit`` | ``cls_softmax`` | ``cosine`` (last ViT layer);
    newlines: ``rows`` | ``keep``.
    """

    kind = "vision"
    ratio = 1.0
    seed = 0
    unpad = True

    def __init__(self, which: str = "most", score: str = "cls_logit", newlines: str = "rows", name: str = "drop_crop"):
        self.which = check_choice(which, WHICH, "which", "drop_crop")
        self.score = check_choice(score, SCORES, "score", "drop_crop")
        self.newlines = check_choice(newlines, NEWLINE_MODES, "newlines", "drop_crop")
        self.name = str(name)
        self.score_request = ScoreRequest(self.score, -1)  # the last ViT layer, as GlobalCom²

    @property
    def convention(self) -> str:
        extreme = "highest" if self.which == "most" else "lowest"
        rows = (
            "; a newline whose packed row the dropped crop emptied goes too"
            if self.newlines == "rows"
            else "; every newline kept"
        )
        return (
            f"drops the crop with the {extreme} {self.score} score summed over its thumbnail cell (last ViT "
            f"layer); keeps the thumbnail and the other crops' packed tokens and newlines{rows} (ratio not applied)"
        )

    def params(self) -> dict:
        return {
            "ratio": 1.0,
            "variant": self.which,
            "score": self.score,
            "newlines": self.newlines,
            "convention": self.convention,
        }

    def __repr__(self) -> str:
        return f"DropCrop(which={self.which!r}, score={self.score!r}, newlines={self.newlines!r})"

    def _validate(self, scores: list, layouts: list) -> None:
        if len(scores) != len(layouts) or not layouts:
            raise ValueError(
                f"drop_crop: got {len(scores)} score tensors for {len(layouts)} layouts "
                "(need one per image, at least one image)"
            )
        for b, (s, layout) in enumerate(zip(scores, layouts)):
            expected = (layout.num_views, layout.tokens_per_view)
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != expected or not s.is_floating_point():
                got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(
                    f"drop_crop: image {b}: scores are {got}, its layout needs float {expected} (views x patches)"
                )
        if len({layout.tokens_per_view for layout in layouts}) > 1:
            raise ValueError("drop_crop: all images of a batch must have the same patches_per_side")

    def select(self, scores: list, layouts: list) -> Selection:
        """Kept tokens for B images.

        scores: B tensors [V_b, N] (view 0 the thumbnail); layouts: B layouts. Returns token_sources
        [B, P] (packed order, PAD-padded), num_tokens [B], crop_budgets [B, Cmax] (1 kept, 0 dropped, NaN
        padding), info: dropped_crop [B] (row-major crop index, -1: no crop), crop_scores [B, Cmax] float64
        (NaN padding), dropped_tokens [B], dropped_newlines [B].
        """
        self._validate(scores, layouts)
        thumb = torch.stack([s[0].float() for s in scores])  # [B, N]
        device = thumb.device
        if not bool(torch.isfinite(thumb).all()):
            raise ValueError("drop_crop: the thumbnail scores contain NaN or inf values")
        member, valid, sources = _batch_geometry(tuple(layouts), str(device))
        batch, n_tok = len(layouts), layouts[0].tokens_per_view

        crop_scores = cell_sums(thumb, member)  # [B, Cmax] float64
        if member.shape[1]:
            pick = (
                crop_scores.masked_fill(~valid, -math.inf).argmax(1)
                if self.which == "most"
                else crop_scores.masked_fill(~valid, math.inf).argmin(1)
            )  # first extreme: lower index
            dropped = torch.where(valid.any(1), pick, -1)
        else:
            dropped = torch.full((batch,), -1, dtype=torch.long, device=device)

        is_token, is_newline = sources >= 0, sources == NEWLINE
        view = torch.where(is_token, sources // n_tok, -1)
        drop = is_token & (view == torch.where(dropped >= 0, dropped + 1, -2)[:, None])
        keep = is_token & ~drop
        if self.newlines == "rows":
            # Packed row of each entry = newlines before it (a newline ends its own row); only crop tokens count.
            row = is_newline.long().cumsum(1) - is_newline.long()
            in_crops = sources >= n_tok
            kept_in_row = torch.zeros_like(sources).scatter_add_(1, row, (keep & in_crops).long())
            dropped_in_row = torch.zeros_like(sources).scatter_add_(1, row, drop.long())
            emptied = (kept_in_row == 0) & (dropped_in_row > 0)
            keep_newline = is_newline & ~emptied.gather(1, row)
        else:
            keep_newline = is_newline
        keep = keep | keep_newline

        target = torch.where(keep, keep.long().cumsum(1) - 1, sources.shape[1])
        token_sources = torch.full((batch, sources.shape[1] + 1), PAD, dtype=torch.long, device=device)
        token_sources.scatter_(1, target, sources)
        is_dropped = torch.arange(valid.shape[1], device=device)[None, :] == dropped[:, None]
        budgets = torch.where(is_dropped, 0.0, 1.0).double().masked_fill(~valid, math.nan)
        info = {
            "dropped_crop": dropped,
            "crop_scores": crop_scores.masked_fill(~valid, math.nan),
            "dropped_tokens": drop.sum(1),
            "dropped_newlines": (is_newline & ~keep_newline).sum(1),
        }
        return Selection(token_sources[:, :-1], keep.sum(1), budgets, info)
