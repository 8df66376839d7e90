"""Figures: which tokens a compressor kept, drawn over the image (the papers' Fig. 4 / Fig. 7); Average %
vs retention ratio (Fig. 1) and GlobalCom²'s τ / α sensitivity (Fig. 3) from run records."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gc2bench.errors import ConfigError
from gc2bench.results.benchmarks import display_name
from gc2bench.results.table import BASELINE, NOT_VARIANT_PARAMS, frozen, load_tables

if TYPE_CHECKING:
    import torch

CROP_PIXELS = 224      # display size of one crop / of the thumbnail
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


@dataclass
class KeptPanel:
    """One row of the kept-token picture: ``label`` over it; ``kept_sources`` [M] the token sources that
    stage kept (NEWLINE and view summaries are not drawn); ``crop_budgets`` per crop, drawn on each."""

    label: str
    kept_sources: "torch.Tensor"
    crop_budgets: list[float] | None = None
    thumbnail_budget: float | None = None


KEPT_LEGEND = ("kept (image shown)", "dropped", "padding (no token)")


def _view_totals(layout) -> np.ndarray:
    """[num_views] tokens of each view in the uncompressed packing (a crop's unpadded tokens)."""
    from gc2bench.compressors.base import source_views

    packed = layout.packed_sources
    return np.bincount(source_views(packed[packed >= 0], layout.tokens_per_view).numpy(),
                       minlength=layout.num_views)


def _view_counts(kept_sources, layout) -> np.ndarray:
    from gc2bench.compressors.base import source_views

    patches = kept_sources[kept_sources >= 0]
    return np.bincount(source_views(patches, layout.tokens_per_view).numpy(), minlength=layout.num_views)


def kept_tokens_figure(image: Image.Image, layout, panels: list[KeptPanel], title: str = ""):
    """Which tokens entered the LLM, as a matplotlib ``Figure``: per panel a row (thumbnail, crop grid),
    tokens the stage dropped greyed out, padding darker, each view labelled kept / its tokens (and its
    budget), a legend below. image: the original RGB image; layout: its AnyRes layout."""
    from matplotlib.patches import Patch

    pps, n_tok = layout.patches_per_side, layout.tokens_per_view
    view_pixels = max(CROP_PIXELS, 12 * pps)
    cell = view_pixels / pps
    rows, cols = layout.grid if layout.num_crops else (1, 0)
    thumbnail = np.asarray(image.convert("RGB").resize((view_pixels, view_pixels), Image.BICUBIC))
    crops = sources = None
    if layout.num_crops:
        height, width = rows * view_pixels, cols * view_pixels
        scale = min(width / image.width, height / image.height)
        resized = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                              Image.BICUBIC)
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
        crops, sources = np.asarray(canvas), patch_sources(layout)
    totals = _view_totals(layout)

    inch = view_pixels / 100
    figure = _new_figure(inch * (1 + cols) + 0.4, (inch * rows + 0.45) * len(panels) + 0.6 + 0.2 * title.count("\n"))
    rows_of_panels = figure.subfigures(len(panels), 1, squeeze=False)[:, 0]
    for panel, sub in zip(panels, rows_of_panels):
        sub.suptitle(panel.label, fontsize=8, x=0.01, ha="left")
        counts = _view_counts(panel.kept_sources, layout)
        kept = panel.kept_sources[panel.kept_sources >= 0].numpy()
        thumb = thumbnail.copy()
        _shade(thumb, np.isin(np.arange(n_tok), kept).reshape(pps, pps), cell, DROPPED_GREY)
        axes_row = sub.subplots(1, 2 if cols else 1, width_ratios=[1, cols] if cols else None, squeeze=False)[0]
        axes = axes_row[0]
        axes.imshow(thumb, interpolation="nearest")
        axes.set_anchor("N")
        axes.set_title("thumbnail", fontsize=7, loc="left")
        budget = "" if panel.thumbnail_budget is None else f"R={panel.thumbnail_budget:.2f} · "
        _view_label(axes, 0, 0, f"{budget}{counts[0]}/{totals[0]}")
        _bare(axes)
        if not cols:
            continue
        canvas = crops.copy()
        inside = sources >= 0
        _shade(canvas, np.isin(sources, kept) | ~inside, cell, DROPPED_GREY)
        _shade(canvas, inside, cell, PAD_GREY, mask=~inside)
        axes = axes_row[1]
        axes.imshow(canvas, interpolation="nearest")
        axes.set_anchor("N")
        axes.set_title(f"{rows}×{cols} crops", fontsize=7, loc="left")
        for r in range(1, rows):
            axes.axhline(r * view_pixels - 0.5, color="white", linewidth=1.5)
        for c in range(1, cols):
            axes.axvline(c * view_pixels - 0.5, color="white", linewidth=1.5)
        for crop in range(layout.num_crops):
            r, c = divmod(crop, cols)
            budget = ("" if panel.crop_budgets is None or crop >= len(panel.crop_budgets)
                      else f"r{crop + 1}={panel.crop_budgets[crop]:.2f} · ")
            _view_label(axes, c * view_pixels, r * view_pixels, f"{budget}{counts[1 + crop]}/{totals[1 + crop]}")
        _bare(axes)
    shades = [(1.0, 1.0, 1.0), (DROPPED_GREY / 255,) * 3, (0.8 * PAD_GREY / 255,) * 3]  # padding is over black
    figure.legend(handles=[Patch(facecolor=colour, edgecolor="black", label=label)
                           for colour, label in zip(shades, KEPT_LEGEND)],
                  loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def _bare(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


def _view_label(axes, x: float, y: float, text: str) -> None:
    axes.text(x + 4, y + 4, text, fontsize=7, va="top", ha="left",
              bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


def draw_kept_tokens(path: str | Path, figure) -> Path:
    """Write a ``kept_tokens_figure`` as a PNG at ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


# -- Average % vs ratio (Fig. 1) and τ / α sensitivity (Fig. 3) -----------------------------------------

MATPLOTLIB_PIN = "matplotlib==3.10.8"
HIGHLIGHT = "globalcom2"
MARKERS = "osD^vP<>hX"
PALETTE = ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")  # C3 (red) is GlobalCom²'s
SENSITIVITY_PARAMS = (("tau", "τ", "τ (temperature of the crop-budget softmax, Eq. 3)"),
                      ("alpha", "α", "α (weight of the global score, Eq. 8)"))


def _new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"matplotlib is not installed (pip install {MATPLOTLIB_PIN})") from None
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _benchmarks_used(table, rows: list, notes: list) -> list:
    """Tasks shared by the baseline and all ``rows``; a note names each task left out and why."""
    if table.baseline is None:
        raise ConfigError(f"{table.model}: no uncompressed (compressor=none) records, which Average % needs")
    tasks = table.shared_tasks(rows)
    for task in table.tasks:
        if task not in tasks:
            lacking = ["the uncompressed run"] if not table.baseline.score(task) else [
                f"{r.label} R={r.ratio:g}" for r in rows if r.score(task) is None]
            notes.append(f"{table.model}: {display_name(task)} left out of the Average: no score for "
                         f"{', '.join(lacking)}")
    if not tasks:
        raise ConfigError(f"{table.model}: no benchmark has records for the uncompressed run and every plotted run")
    return tasks


def _benchmark_line(tasks: list) -> str:
    return f"Average over {len(tasks)} benchmark{'s' if len(tasks) > 1 else ''}: " + \
        ", ".join(display_name(t) for t in tasks)


def _style(axis, values: list) -> None:
    """Baseline line at 100 %, grid, y label and limits that show both the data and 100 %."""
    axis.axhline(100.0, color="0.35", linestyle="--", linewidth=1.2, label="none (uncompressed) = 100%", zorder=1)
    axis.grid(True, color="0.88", linewidth=0.8)
    axis.set_axisbelow(True)
    axis.set_ylabel("Average (% of uncompressed)")
    low, high = min([*values, 100.0]), max([*values, 100.0])
    margin = max(1.0, 0.08 * (high - low))
    axis.set_ylim(low - margin, high + margin)


def _plotted_lines(table, rows: list, notes: list) -> dict:
    """label → [(ratio, row)]: per method, the variants run at the most ratios (a method's main sweep);
    a note names the variants left out (e.g. a τ/α sweep at a few ratios: see --kind sensitivity)."""
    lines: dict = {}
    for row in rows:
        lines.setdefault(row.method, {}).setdefault(row.label, []).append((row.ratio, row))
    kept = {}
    for method, variants in lines.items():
        most = max(len(points) for points in variants.values())
        kept.update({label: points for label, points in variants.items() if len(points) == most})
        dropped = [label for label, points in variants.items() if len(points) < most]
        if dropped:
            notes.append(f"{table.model}: the ratio plot shows {method}'s variants run at {most} ratios and leaves "
                         f"out {len(dropped)} run at fewer ({'; '.join(dropped)})")
    return kept


def plot_ratio(tables: dict, path: str | Path, notes: list | None = None) -> Path:
    """Average % vs retention ratio, one line per method (and parameter variant), one panel per model."""
    notes = [] if notes is None else notes
    figure = _new_figure(9.0 * len(tables), 5.2)
    for axis, (model, table) in zip(figure.subplots(1, len(tables), squeeze=False)[0], tables.items()):
        lines = _plotted_lines(table, [row for row in table.rows if row.method != BASELINE], notes)
        if not lines:
            raise ConfigError(f"{model}: no compressed runs to plot, only the uncompressed one")
        rows = [row for points in lines.values() for _, row in points]
        tasks = _benchmarks_used(table, rows, notes)
        highlighted = max((label for label, points in lines.items() if points[0][1].method == HIGHLIGHT),
                          key=lambda label: len(lines[label]), default=None)
        values = []
        for number, (label, points) in enumerate(lines.items()):
            points.sort(key=lambda point: point[0])
            ratios = [ratio for ratio, _ in points]
            averages = [table.average(row, tasks) for _, row in points]
            values.extend(averages)
            main = label == highlighted
            axis.plot(ratios, averages, marker="*" if main else MARKERS[number % len(MARKERS)],
                      markersize=12 if main else 6, linewidth=2.6 if main else 1.5,
                      color="C3" if main else PALETTE[number % len(PALETTE)], label=label,
                      zorder=3 if main else 2)
        ratios = sorted({row.ratio for row in rows})
        axis.set_xticks(ratios, [f"{r:g}" for r in ratios])
        spread = max(ratios) - min(ratios) or 0.1
        axis.set_xlim(max(ratios) + 0.06 * spread, min(ratios) - 0.06 * spread)
        axis.set_xlabel("Retention ratio R (share of visual tokens kept)  →  more compression")
        axis.set_title(f"{model}\n{_benchmark_line(tasks)}", fontsize=10)
        _style(axis, values)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    figure.suptitle("Average performance vs retention ratio", fontsize=13, fontweight="bold")
    return _save(figure, path)


def _modal_params(rows: list) -> dict:
    """Per (ratio, parameter), the parameter's most frequent value (as JSON) among ``rows``."""
    counts: dict = {}
    for row in rows:
        for key, value in row.params.items():
            if key not in NOT_VARIANT_PARAMS:
                counts.setdefault((row.ratio, key), Counter())[frozen(value)] += 1
    return {key: counter.most_common(1)[0][0] for key, counter in counts.items()}


def _modal_value(rows: list, param: str):
    values = Counter(row.params[param] for row in rows if param in row.params)
    return values.most_common(1)[0][0] if values else None


def _sweeps(rows: list, param: str) -> dict:
    """ratio → [(value of ``param``, row)] over the rows whose other parameters have their most frequent
    value at that ratio; only ratios where ``param`` takes two or more values, unless none does."""
    modes = _modal_params(rows)
    by_ratio: dict = {}
    for row in rows:
        if param in row.params and all(frozen(value) == modes[(row.ratio, key)] for key, value in row.params.items()
                                       if key not in NOT_VARIANT_PARAMS and key != param):
            by_ratio.setdefault(row.ratio, []).append((float(row.params[param]), row))
    swept = {ratio: points for ratio, points in by_ratio.items() if len(points) > 1}
    return swept or by_ratio


def plot_sensitivity(tables: dict, path: str | Path, method: str = "globalcom2", notes: list | None = None) -> Path:
    """Average % as a function of τ and of α for ``method``, one line per ratio; each panel keeps the
    runs whose other parameters have their most frequent value (at that ratio)."""
    notes = [] if notes is None else notes
    figure = _new_figure(12.0, 5.0 * len(tables))
    subfigures = figure.subfigures(len(tables), 1, squeeze=False)[:, 0]
    axes = []
    for subfigure, (model, table) in zip(subfigures, tables.items()):
        panel_row = subfigure.subplots(1, 2)
        axes.extend(panel_row)
        rows = [row for row in table.rows if row.method == method]
        if not rows:
            raise ConfigError(f"{model}: no finished {method} records (--method names the compressor)")
        sweeps = {param: _sweeps(rows, param) for param, _, _ in SENSITIVITY_PARAMS}
        plotted = [row for by_ratio in sweeps.values() for points in by_ratio.values() for _, row in points]
        tasks = _benchmarks_used(table, plotted or rows, notes)
        ratios = sorted({ratio for by_ratio in sweeps.values() for ratio in by_ratio}, reverse=True)
        for axis, (param, symbol, label) in zip(panel_row, SENSITIVITY_PARAMS):
            others = [(s, p) for p, s, _ in SENSITIVITY_PARAMS if p != param and _modal_value(rows, p) is not None]
            fixed = ", ".join(f"{s} = {_modal_value(rows, p):g}" for s, p in others)
            axis.set_title(f"Average vs {symbol}" + (f" ({fixed})" if fixed else ""), fontsize=11)
            axis.set_xlabel(label)
            if not sweeps[param]:
                _style(axis, [])
                axis.text(0.5, 0.5, f"no {symbol} parameter in the {method} records", transform=axis.transAxes,
                          ha="center", va="center", fontsize=11)
                continue
            values, xs = [], set()
            for ratio, points in sweeps[param].items():
                points.sort(key=lambda point: point[0])
                x = [value for value, _ in points]
                y = [table.average(row, tasks) for _, row in points]
                xs.update(x)
                values.extend(y)
                number = ratios.index(ratio)
                axis.plot(x, y, marker=MARKERS[number % len(MARKERS)], linewidth=1.8, markersize=7,
                          color=f"C{number}", label=f"R = {ratio:g}", zorder=3)
            _style(axis, values)
            if min(xs) > 0 and max(xs) / min(xs) >= 20:
                axis.set_xscale("log")
            axis.set_xticks(sorted(xs), [f"{x:g}" for x in sorted(xs)])
            axis.minorticks_off()
            reference = _modal_value(rows, param)
            axis.axvline(float(reference), color="0.5", linestyle=":", linewidth=1.4,
                         label="the value fixed in the other panel")
            if len(xs) == 1:
                notes.append(f"{model}: only {symbol} = {next(iter(xs)):g} in the {method} records")
                axis.set_title(f"{axis.get_title()}\nonly {symbol} = {next(iter(xs)):g} in the records", fontsize=11)
        subfigure.suptitle(f"{model} — {_benchmark_line(tasks)}", fontsize=9, color="0.3")
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 6),
                  fontsize=9, frameon=False)
    figure.suptitle(f"{method}: sensitivity to τ and α", fontsize=13, fontweight="bold")
    return _save(figure, path)


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_results(results_dir: str, kind: str, out: str, model: str | None = None, method: str = "globalcom2") -> int:
    """The ``gc2bench plot`` command: write the figure, notes on stderr; exit status. Bad input raises a
    ``Gc2benchError`` (``cli.main`` reports it)."""
    if not str(out).lower().endswith(".png"):
        raise ConfigError(f"--out {out}: must be a .png file")
    if kind not in ("ratio", "sensitivity"):
        raise ConfigError(f"--kind {kind!r}: not one of ratio, sensitivity")
    notes: list = []
    tables = load_tables(results_dir, model)
    path = plot_ratio(tables, out, notes) if kind == "ratio" else plot_sensitivity(tables, out, method, notes)
    for note in dict.fromkeys(notes):
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
