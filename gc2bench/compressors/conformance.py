"""`gc2bench conformance METHOD FILE`: compare a compressor's default mode with reference vectors.

File format (see ``fields`` inside ../shared/vectors/globalcom2_reference.json): top-level
``grid_pinpoints`` (as the reference code writes them, (width, height) for LLaVA; override
with ``pinpoint_order: "hw"``), ``patches_per_side``, ``tau``; optional ``crop_size`` (else
``patch_size`` × patches_per_side, patch_size defaulting to 14), ``alpha``. Each case has
``name``, ``image_size`` (width, height), ``ratio``, ``scores`` [views][patches] and
``expected``: ``grid`` (across, down), ``scales`` (r_j), ``thumbnail_kept`` (emission order),
``crops_sequence`` (j*N + i for token i of crop j, -1 for a newline). Cases may override
``tau`` / ``alpha``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gc2bench.errors import ConfigError
from gc2bench.layout import NEWLINE, anyres_layout

BUDGET_TOLERANCE = 1e-6


def load_vectors(file: str | Path) -> dict:
    """The parsed vectors file, with its required keys checked."""
    data = json.loads(Path(file).read_text())
    missing = [k for k in ("grid_pinpoints", "patches_per_side", "cases") if k not in data]
    if missing:
        raise ValueError(f"{file}: missing top-level keys {missing}")
    return data


def case_layout(data: dict, case: dict):
    """The AnyResLayout of one case (image_size in the file is (width, height))."""
    pps = int(data["patches_per_side"])
    crop_size = int(data.get("crop_size") or int(data.get("patch_size", 14)) * pps)
    width, height = case["image_size"]
    return anyres_layout(
        (height, width), data["grid_pinpoints"], crop_size, pps, pinpoint_order=data.get("pinpoint_order", "wh")
    )


def case_compressor(data: dict, case: dict):
    """GlobalCom2 in its default (reference) mode with the case's ratio, tau and alpha."""
    from gc2bench.compressors.globalcom2 import GlobalCom2

    options = {"ratio": case["ratio"]}
    for key in ("tau", "alpha"):
        if key in case or key in data:
            options[key] = case.get(key, data.get(key))
    return GlobalCom2(**options)


def check_globalcom2_case(data: dict, case: dict) -> tuple[bool, str]:
    """(agrees, one-line description) for one case."""
    layout = case_layout(data, case)
    expected = case["expected"]
    problems = []
    grid = [layout.grid[1], layout.grid[0]]
    if grid != list(expected["grid"]):
        problems.append(f"grid {grid[0]}x{grid[1]} != expected {expected['grid'][0]}x{expected['grid'][1]}")
    scores = torch.tensor(case["scores"], dtype=torch.float32)
    if tuple(scores.shape) != (layout.num_views, layout.tokens_per_view):
        problems.append(
            f"scores {tuple(scores.shape)} do not fit the layout's {(layout.num_views, layout.tokens_per_view)}"
        )
        return False, "; ".join(problems)
    selection = case_compressor(data, case).select([scores], [layout])
    n_tok = layout.tokens_per_view
    sources = selection.per_image()[0].tolist()
    keep_thumb = selection.info["thumbnail_keep_count"]
    thumb, crop_side = sources[:keep_thumb], sources[keep_thumb:]
    budgets = [b for b in selection.crop_budgets[0].tolist() if not math.isnan(b)]

    want_budgets = list(expected["scales"])
    if len(budgets) != len(want_budgets):
        problems.append(f"{len(budgets)} budgets != expected {len(want_budgets)}")
        budget_err = math.inf
    else:
        budget_err = max((abs(a - b) for a, b in zip(budgets, want_budgets)), default=0.0)
        if budget_err > BUDGET_TOLERANCE:
            problems.append(f"budgets differ by {budget_err:.2e}")
    if thumb != list(expected["thumbnail_kept"]):
        problems.append(
            f"thumbnail kept {len(thumb)} tokens, expected {len(expected['thumbnail_kept'])}"
            + ("" if len(thumb) != len(expected["thumbnail_kept"]) else " (different tokens or order)")
        )
    crops = [s - n_tok for s in crop_side if s != NEWLINE]
    want_crops = [s for s in expected["crops_sequence"] if s != -1]
    if crops != want_crops:
        first = next((i for i, (a, b) in enumerate(zip(crops, want_crops)) if a != b), min(len(crops), len(want_crops)))
        problems.append(f"crop sequence differs at {first} ({len(crops)} tokens, expected {len(want_crops)})")
    newlines = sum(1 for s in crop_side if s == NEWLINE)
    summary = (
        f"grid {grid[0]}x{grid[1]}, budgets max|d| {budget_err:.1e}, thumbnail {len(thumb)}, "
        f"crops {len(crops)} + {newlines} newlines"
    )
    return not problems, summary + ("" if not problems else " -- " + "; ".join(problems))


def run_conformance(method: str, file: str) -> int:
    """Print one line per case and lastly ``N/N cases agree``; 0 if all agree, 1 if not; a ConfigError on a
    bad method or file."""
    if method != "globalcom2":
        raise ConfigError(f"conformance: no reference check for method {method!r}")
    try:
        data = load_vectors(file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"conformance: cannot read {file}: {error}") from None
    cases = data["cases"]
    agree = 0
    for index, case in enumerate(cases):
        name = case.get("name", f"case{index}")
        try:
            ok, line = check_globalcom2_case(data, case)
        except (KeyError, ValueError, TypeError) as error:
            ok, line = False, f"error: {type(error).__name__}: {error}"
        agree += ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {line}")
    print(f"{agree}/{len(cases)} cases agree")
    return 0 if cases and agree == len(cases) else 1
