"""`gc2bench analyze positional-bias`: image tokens an LLM-stage method keeps per crop position, with the
crops in their normal order and reversed (AAAI GlobalCom² paper, Fig. 4).

The paper, Fig. 4: "LLM attention-guided methods (e.g., FastV) assign higher scores (bars) to later
tokens, regardless of their content or input order (second row: sequential crops; third row: reversed
crops)"; §1 (iii): they "systematically allocate more tokens to later-positioned crops irrespective of
their actual informative content"; §5.5: FastV keeps ">3×" more tokens in later-positioned crops.

What is measured. Each image is answered once per crop order (the compressor's ``crop_order``):
``sequential`` emits the thumbnail, then crop 1, …, crop n as blocks; ``reversed`` the thumbnail, then
crop n, …, crop 1 (a block = the crop's unpadded rows, a newline after each; the block's content is the
same in both orders, see ``gc2bench.compressors.base.crop_block_sources``); ``packed`` is transformers'
row-interleaved order (position = crop index there). One prefill and one new token per answer. The
decoder pruner's record of the sequence after the method's last stage (``PrefillPlan.kept_segments``)
gives the image tokens kept per view (thumbnail, each crop), newlines and recycled tokens apart; their
sum is the pruner's image-token count after that stage. Also recorded: the share of the first stage's
ranking attention (the rows the method scores image tokens by) that falls on each crop.

Position p (1-based) of an order holds crop p (``sequential``, ``packed``) or crop n + 1 − p
(``reversed``). Images are grouped by their number of crops. Reading: if content decides, a crop keeps
about as much in both orders (kept *by crop* agrees across orders); if position decides, a position does
(kept *by position* agrees, later positions keeping more).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gc2bench.compressors.base import CROP_ORDERS, SEGMENT_NEWLINE, SEGMENT_RECYCLED
from gc2bench.errors import ConfigError

DEFAULT_ORDERS = ("sequential", "reversed")
DEFAULT_PROMPT = "What is in the image?"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ORDER_COLOURS = {"sequential": "C0", "reversed": "C1", "packed": "0.6"}


# -- counting ---------------------------------------------------------------------------------------


def bucket_counts(segments: torch.Tensor, num_views: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[B, V + 2] per row: image tokens of view 0..V-1 (0 thumbnail, 1 + j crop j), then newlines, then
    recycled tokens. segments: [B, L] long segment ids (SEGMENT_TEXT at text and padding); weights: [B, L]
    summed instead of counting (e.g. attention). Float64 when weighted, long otherwise."""
    batch, _ = segments.shape
    width = num_views + 3  # last column collects text and padding
    bucket = torch.full_like(segments, num_views + 2)
    bucket = torch.where((segments >= 0) & (segments < num_views), segments, bucket)
    bucket = torch.where(segments == SEGMENT_NEWLINE, num_views, bucket)
    bucket = torch.where(segments == SEGMENT_RECYCLED, num_views + 1, bucket)
    flat = (torch.arange(batch, device=segments.device)[:, None] * width + bucket).flatten()
    values = (
        torch.ones(flat.numel(), dtype=torch.float64, device=segments.device)
        if weights is None
        else weights.double().flatten()
    )
    sums = torch.zeros(batch * width, dtype=torch.float64, device=segments.device).index_add_(0, flat, values)
    sums = sums.view(batch, width)[:, :-1]
    return sums.round().long() if weights is None else sums


def crops_at_positions(order: str, num_crops: int) -> list[int]:
    """The crop (1-based, row-major) at each position 1..n of ``order``."""
    crops = list(range(1, num_crops + 1))
    return crops[::-1] if order == "reversed" else crops


def emitted_crop_order(sources: torch.Tensor, tokens_per_view: int) -> list[int]:
    """Crops (1-based) by the position of their first emitted token. sources: [M] token sources (NEWLINE < 0)."""
    crop = torch.where(sources >= tokens_per_view, sources // tokens_per_view, 0)  # 0: thumbnail, newline
    length = len(sources)
    first = torch.full((int(crop.max()) + 1 if length else 1,), length, dtype=torch.long)
    first = first.scatter_reduce(0, crop, torch.arange(length), "amin")[1:]  # [n] first index per crop
    crops = torch.argsort(first, stable=True) + 1
    return crops[first[crops - 1] < length].tolist()


@dataclass
class ImageMeasurement:
    """One image answered under one crop order. Count lists are [V + 2]: per view (0 thumbnail, 1 + j crop
    j), then newlines, then recycled tokens."""

    name: str
    image_size: tuple[int, int]  # (height, width) px
    grid: tuple[int, int]  # (rows, cols) of crops
    order: str
    crop_at_position: list[int]  # [n] crop at positions 1..n
    tokens: list[int]  # image tokens entering the LLM
    kept: list[int]  # after the method's last stage
    kept_per_stage: list[list[int]]  # [stages][V + 2]
    attention: list[float]  # share of the first stage's ranking attention on image tokens
    kept_total: int  # the pruner's image tokens after the last stage (= sum(kept))

    @property
    def num_crops(self) -> int:
        return len(self.crop_at_position)


def measure_image(adapter, compressor, image, name: str, order: str, prompt: str) -> ImageMeasurement:
    """Answer ``prompt`` about ``image`` with ``compressor.crop_order = order`` and read what the pruner kept."""
    compressor.crop_order = order
    adapter.generate([prompt], [[image]], max_new_tokens=1, do_sample=False)
    layout, sources = adapter.last_selection[0]
    plan = adapter.last_plan
    views = layout.num_views
    tokens = bucket_counts(plan.segment, views)[0]
    per_stage = torch.stack([bucket_counts(segments, views)[0] for segments in plan.kept_segments])
    attention = bucket_counts(plan.segment, views, plan.attention_rows[0])[0]
    attention = attention / attention.sum().clamp(min=1e-30)
    kept_total = int(plan.image_tokens_per_layer[-1, 0])
    if int(per_stage[-1].sum()) != kept_total:
        raise RuntimeError(
            f"{name}: kept tokens per view sum to {int(per_stage[-1].sum())}, the pruner kept {kept_total}"
        )
    positions = crops_at_positions(order, layout.num_crops)
    emitted = emitted_crop_order(sources, layout.tokens_per_view)
    if order != "packed" and emitted != [c for c in positions if c in emitted]:
        raise RuntimeError(f"{name}: crops emitted as {emitted}, expected {positions} for crop_order={order}")
    return ImageMeasurement(
        name,
        (image.height, image.width),
        tuple(layout.grid),
        order,
        positions,
        tokens.tolist(),
        per_stage[-1].tolist(),
        per_stage.tolist(),
        attention.tolist(),
        kept_total,
    )


# -- aggregation ------------------------------------------------------------------------------------


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if a.numel() < 2 or float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return None
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


@dataclass
class GroupSummary:
    """Images with ``crops`` crops: per order the kept ratio of the last to the first crop position; with both
    sequential and reversed, the correlation across orders of kept counts by position and by crop."""

    crops: int
    images: int
    last_over_first: dict = field(default_factory=dict)  # order → mean kept at position n / at position 1
    agreement_by_position: float | None = None  # Pearson r over images × positions
    agreement_by_crop: float | None = None  # Pearson r over images × crops


def summarize(measurements: list[ImageMeasurement]) -> tuple[list[dict], list[GroupSummary]]:
    """Rows (per crop count, order, position: mean tokens, mean kept, kept share, attention share) and one
    summary per crop count."""
    rows, summaries = [], []
    orders = list(dict.fromkeys(m.order for m in measurements))
    for crops in sorted({m.num_crops for m in measurements}):
        by_order, kept_by_position = {}, {}
        for order in orders:
            group = [m for m in measurements if m.num_crops == crops and m.order == order]
            if not group:
                continue
            tokens = torch.tensor([m.tokens for m in group], dtype=torch.float64)  # [I, V + 2]
            kept = torch.tensor([m.kept for m in group], dtype=torch.float64)
            attention = torch.tensor([m.attention for m in group], dtype=torch.float64)
            by_order[order] = kept
            columns = [("thumbnail", None, 0)] + [(p + 1, c, c) for p, c in enumerate(crops_at_positions(order, crops))]
            columns += [("newlines", None, crops + 1)]
            if bool((kept[:, crops + 2] > 0).any()):
                columns += [("recycled", None, crops + 2)]
            for position, crop, column in columns:
                total = float(tokens[:, column].sum())
                rows.append(
                    {
                        "crops": crops,
                        "order": order,
                        "position": position,
                        "crop": crop,
                        "images": len(group),
                        "tokens": float(tokens[:, column].mean()),
                        "kept": float(kept[:, column].mean()),
                        "kept_share": float(kept[:, column].sum()) / total if total else None,
                        "attention_share": float(attention[:, column].mean()),
                    }
                )
            view_of_position = torch.tensor(crops_at_positions(order, crops))
            kept_by_position[order] = kept[:, view_of_position]  # [I, n]
        summary = GroupSummary(crops, max(len(k) for k in by_order.values()))
        for order, kept in kept_by_position.items():
            first, last = float(kept[:, 0].mean()), float(kept[:, -1].mean())
            summary.last_over_first[order] = last / first if first else None
        if (
            "sequential" in by_order
            and "reversed" in by_order
            and len(by_order["sequential"]) == len(by_order["reversed"])
        ):
            summary.agreement_by_position = _pearson(
                kept_by_position["sequential"].flatten(), kept_by_position["reversed"].flatten()
            )
            summary.agreement_by_crop = _pearson(
                by_order["sequential"][:, 1 : crops + 1].flatten(), by_order["reversed"][:, 1 : crops + 1].flatten()
            )
        summaries.append(summary)
    return rows, summaries


# -- output -----------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _kept_layers(setup: dict) -> str:
    """'LLM layers K–L-1 (of 0–L-1)': where the counted tokens are."""
    first, last = setup["final_layer"], setup["num_layers"] - 1
    return f"LLM layer{'s' if first < last else ''} {first}{f'–{last}' if first < last else ''} (of 0–{last})"


def format_table(setup: dict, rows: list[dict], summaries: list[GroupSummary]) -> str:
    """The table printed to stdout: one line per crop count × order × position, then one summary per crop count."""
    lines = [
        (
            f"# positional bias: {setup['compressor']['name']} R={setup['ratio']:g} on {setup['model']['name']}; "
            f"{setup['images']} image(s); prompt {setup['prompt']!r}"
        ),
        (
            f"# kept = image tokens in {_kept_layers(setup)}, after the method's last stage; share = kept / tokens; "
            "attention = share of stage 1's ranking attention on image tokens; position p holds crop p (sequential) "
            "or crop n+1-p (reversed)"
        ),
        (
            f"{'crops':>5} {'order':<10} {'position':>9} {'crop':>4} {'images':>6} {'tokens':>7} {'kept':>7} "
            f"{'share':>6} {'attention':>9}"
        ),
    ]
    for row in rows:
        share = "–" if row["kept_share"] is None else f"{100 * row['kept_share']:.1f}%"
        lines.append(
            f"{row['crops']:>5} {row['order']:<10} {row['position']!s:>9} {_fmt(row['crop'], 'd'):>4} "
            f"{row['images']:>6} {row['tokens']:>7.1f} {row['kept']:>7.2f} {share:>6} "
            f"{100 * row['attention_share']:>8.1f}%"
        )
    for summary in summaries:
        ratios = ", ".join(f"{order} {_fmt(value, '.2f')}x" for order, value in summary.last_over_first.items())
        line = f"# {summary.crops} crops, {summary.images} image(s): last / first crop position kept: {ratios}"
        if summary.agreement_by_position is not None or summary.agreement_by_crop is not None:
            line += (
                f"; sequential vs reversed agree by position r = {_fmt(summary.agreement_by_position, '.2f')}, "
                f"by crop r = {_fmt(summary.agreement_by_crop, '.2f')} (position-driven: by position ≈ 1; "
                "content-driven: by crop ≈ 1)"
            )
        lines.append(line)
    return "\n".join(lines)


def plot_positional_bias(setup: dict, rows: list[dict], summaries: list[GroupSummary], path: str | Path) -> Path:
    """Grouped bars, one row of panels per crop count: mean kept tokens by position in the LLM input (left;
    thumbnail first) and by crop of the image (right), one bar per crop order; dashed: the kept share of
    all image tokens applied to a crop (an allocation blind to both content and position)."""
    from gc2bench.results.plots import _new_figure, _save

    groups = [s.crops for s in summaries]
    widest = max(groups)
    figure = _new_figure(max(10.0, 4.0 + 1.3 * widest), 0.6 + 3.6 * len(groups))
    axes = figure.subplots(len(groups), 2, squeeze=False, width_ratios=[widest + 1.5, widest + 0.5])
    for (by_position, by_crop), summary in zip(axes, summaries):
        crops = summary.crops
        group_rows = [r for r in rows if r["crops"] == crops]
        orders = list(dict.fromkeys(r["order"] for r in group_rows))
        width = 0.8 / len(orders)
        image_rows = [r for r in group_rows if r["position"] not in ("newlines", "recycled")]
        original = [r for r in group_rows if r["order"] == orders[0] and r["position"] != "recycled"]
        uniform = sum(r["kept"] for r in original) / max(sum(r["tokens"] for r in original), 1e-9)
        crop_tokens = [r["tokens"] for r in image_rows if r["order"] == orders[0] and r["crop"] is not None]
        for number, order in enumerate(orders):
            ordered = [r for r in image_rows if r["order"] == order]
            offset = (number - (len(orders) - 1) / 2) * width
            x = [0 if r["position"] == "thumbnail" else r["position"] for r in ordered]
            bars = by_position.bar(
                [v + offset for v in x],
                [r["kept"] for r in ordered],
                width,
                color=ORDER_COLOURS.get(order, f"C{number}"),
                label=order,
                zorder=3,
            )
            if crops <= 8:
                labels = ["" if r["crop"] is None else f"c{r['crop']}" for r in ordered]
                by_position.bar_label(bars, labels=labels, fontsize=7, color="0.3", padding=1)
            per_crop = sorted((r for r in ordered if r["crop"] is not None), key=lambda r: r["crop"])
            bars = by_crop.bar(
                [r["crop"] + offset for r in per_crop],
                [r["kept"] for r in per_crop],
                width,
                color=ORDER_COLOURS.get(order, f"C{number}"),
                label=order,
                zorder=3,
            )
            if crops <= 8:
                labels = [f"p{r['position']}" for r in per_crop]
                by_crop.bar_label(bars, labels=labels, fontsize=7, color="0.3", padding=1)
        if crop_tokens:
            level = uniform * sum(crop_tokens) / len(crop_tokens)
            for axis in (by_position, by_crop):
                axis.axhline(
                    level,
                    color="0.35",
                    linestyle="--",
                    linewidth=1.1,
                    zorder=2,
                    label=f"uniform: {100 * uniform:.0f}% of every crop",
                )
        by_position.axvline(0.5, color="0.75", linewidth=0.8, zorder=1)
        by_position.set_xticks(range(crops + 1), ["thumb."] + [str(p) for p in range(1, crops + 1)])
        by_position.set_xlabel("position of the crop block in the LLM input (earlier → later)")
        by_crop.set_xticks(range(1, crops + 1), [str(c) for c in range(1, crops + 1)])
        by_crop.set_xlabel("crop of the image (row-major)")
        ratios = ", ".join(f"{o} {_fmt(v, '.2f')}×" for o, v in summary.last_over_first.items())
        by_position.set_title(
            f"by position in the LLM input\nkept at the last / first position: {ratios}", fontsize=9.5
        )
        agreement = "one order only"
        if summary.agreement_by_crop is not None or summary.agreement_by_position is not None:
            agreement = (
                f"orders agree by crop r = {_fmt(summary.agreement_by_crop, '.2f')}, "
                f"by position r = {_fmt(summary.agreement_by_position, '.2f')}"
            )
        by_crop.set_title(f"by crop of the image\n{agreement}", fontsize=9.5)
        by_position.set_ylabel(f"{crops} crops, {summary.images} image(s)\nimage tokens kept (mean)")
        by_crop.set_ylabel("image tokens kept (mean)")
        for axis in (by_position, by_crop):
            axis.grid(True, axis="y", color="0.88", linewidth=0.8)
            axis.set_axisbelow(True)
            axis.margins(y=0.15)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    compressor = setup["compressor"]
    figure.suptitle(
        f"Positional bias: {compressor['name']} R={setup['ratio']:g} on {setup['model']['name']} — "
        f"image tokens kept per crop in {_kept_layers(setup)}",
        fontsize=12,
        fontweight="bold",
    )
    return _save(figure, path)


# -- images -----------------------------------------------------------------------------------------


def image_files(paths: list[str], limit: int | None) -> list[Path]:
    """Image files of ``paths`` (files, or folders searched for IMAGE_SUFFIXES, sorted), checked readable."""
    from PIL import Image, UnidentifiedImageError

    files = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ConfigError(f"--images {text}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--images {text}: no such file or folder")
    files = files[:limit] if limit else files
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header only
                if min(image.size) < 1:
                    raise OSError(f"size {image.size}")
        except (UnidentifiedImageError, OSError) as error:
            raise ConfigError(f"--images {path}: cannot read image ({error})") from None
    return files


def load_image(path: Path):
    from PIL import Image

    from gc2bench.models.adapter import to_rgb

    with Image.open(path) as image:
        image.load()
        return to_rgb(image.copy())


def model_grids(adapter) -> list[tuple[int, int]]:
    """(rows, cols) of the model's grid pinpoints."""
    crop = int(adapter.config.vision_config.image_size)
    return [(int(h) // crop, int(w) // crop) for h, w in adapter.config.image_grid_pinpoints]


def synthetic_images(adapter, count: int, grid: tuple[int, int] | None = None, seed: int = 0) -> list[tuple]:
    """``count`` (name, RGB image) pairs sized for ``grid`` (default: 2x2 if the model has it, the paper's
    LLaVA-NeXT case, else its grid with the most crops): smooth colour fields with a few solid rectangles
    and fine noise, 100–125% of the grid's pixel size, deterministic in ``seed``."""
    import torch.nn.functional as F
    from PIL import Image

    grids = model_grids(adapter)
    if grid is None:
        grid = (2, 2) if (2, 2) in grids else max(grids, key=lambda g: (g[0] * g[1], -abs(g[0] - g[1])))
    elif tuple(grid) not in grids:
        raise ConfigError(
            f"--grid {grid[0]}x{grid[1]}: not one of the model's crop grids "
            f"({', '.join(f'{r}x{c}' for r, c in sorted(set(grids)))})"
        )
    crop = int(adapter.config.vision_config.image_size)
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index in range(count):
        height, width = grid[0] * crop, grid[1] * crop  # the fallback: exactly the grid's size
        for _ in range(10):
            scale, stretch = (1.0 + 0.25 * torch.rand(2, generator=generator)).tolist()
            size = (round(grid[0] * crop * scale), round(grid[1] * crop * scale * (0.8 + 0.2 * stretch)))
            if tuple(adapter.layout(size).grid) == tuple(grid):
                height, width = size
                break
        coarse = torch.rand(1, 3, 6, 6, generator=generator)
        pixels = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        for _ in range(3):
            top, left = (torch.rand(2, generator=generator) * torch.tensor([height, width]) * 0.8).long().tolist()
            size = (torch.rand(2, generator=generator) * 0.25 + 0.08) * torch.tensor([height, width])
            bottom, right = top + int(size[0]), left + int(size[1])
            pixels[:, top:bottom, left:right] = torch.rand(3, 1, 1, generator=generator)
        pixels = (pixels + 0.1 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)
        array = (255 * pixels.permute(1, 2, 0)).round().byte().numpy()
        images.append((f"synthetic-{index}", Image.fromarray(array, "RGB")))
    return images


# -- the command ------------------------------------------------------------------------------------


# The model, compressor and ratio measured unless the Hydra overrides choose others.
DEFAULT_OVERRIDES = ("model=tiny", "compressor=fastv", "ratio=0.25")


@dataclass
class Options:
    overrides: list = field(default_factory=list)  # Hydra overrides as for run.py, after DEFAULT_OVERRIDES
    orders: tuple = DEFAULT_ORDERS
    images: list | None = None  # files or folders; None: synthetic
    num_images: int | None = None  # synthetic count (default 8) or the first N files
    grid: tuple | None = None  # synthetic images' crop grid
    prompt: str = DEFAULT_PROMPT
    out: str = "positional_bias.png"
    json_path: str | None = None
    seed: int = 0


def crop_order_methods() -> list[str]:
    """The conf/compressor configs with a ``crop_order`` option, in the table's method order."""
    from omegaconf import OmegaConf

    from gc2bench.config import CONF_DIR, config_names
    from gc2bench.results.table import method_order

    names = config_names("compressor")
    return [
        name
        for name in method_order(names)
        if name in names and "crop_order" in OmegaConf.load(CONF_DIR / "compressor" / f"{name}.yaml")
    ]


def parse_orders(text: str) -> tuple:
    orders = tuple(dict.fromkeys(item.strip() for item in str(text).split(",") if item.strip()))
    bad = [order for order in orders if order not in CROP_ORDERS]
    if not orders or bad:
        raise ConfigError(f"--orders {text!r}: give a comma-separated list of {', '.join(CROP_ORDERS)}")
    return orders


def parse_grid(text: str | None) -> tuple | None:
    if text is None:
        return None
    rows, sep, cols = str(text).lower().partition("x")
    if not (sep and rows.isdigit() and cols.isdigit() and int(rows) >= 1 and int(cols) >= 1):
        raise ConfigError(f"--grid {text!r}: give ROWSxCOLS, e.g. 2x2")
    return int(rows), int(cols)


def prepare(options: Options):
    """Validate everything that can be checked without a model; returns (cfg, compressor, image files)."""
    from gc2bench.config import build_compressor, compose_run_config

    options.orders = parse_orders(
        ",".join(options.orders) if isinstance(options.orders, (list, tuple)) else options.orders
    )
    if options.num_images is not None and options.num_images < 1:
        raise ConfigError(f"--num-images {options.num_images}: must be >= 1")
    if not str(options.out).lower().endswith(".png"):
        raise ConfigError(f"--out {options.out}: must be a .png file")
    files = image_files(options.images, options.num_images) if options.images else None
    cfg = compose_run_config([*DEFAULT_OVERRIDES, *options.overrides])
    compressor = build_compressor(cfg)
    if compressor.kind != "llm" or "crop_order" not in cfg.compressor:
        raise ConfigError(
            f"compressor={compressor.name}: not an LLM-stage method with a crop_order option; "
            f"positional bias is measured for {', '.join(crop_order_methods())}"
        )
    return cfg, compressor, files


def analyze_positional_bias(options: Options, log=None) -> dict:
    """Run the analysis; returns {"setup", "rows", "summaries", "measurements"} (JSON-ready)."""
    from gc2bench.config import build_model

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    cfg, compressor, files = prepare(options)
    adapter = build_model(cfg, compressor)
    if files is None:
        pictures = synthetic_images(adapter, options.num_images or 8, options.grid, options.seed)
    else:
        pictures = [(path.name, path) for path in files]
    measurements = []
    for number, (name, picture) in enumerate(pictures, start=1):
        image = load_image(picture) if isinstance(picture, Path) else picture
        results = [measure_image(adapter, compressor, image, name, order, options.prompt) for order in options.orders]
        first = results[0]
        kept = "; ".join(f"{m.order} " + "/".join(str(m.kept[c]) for c in m.crop_at_position) for m in results)
        log(
            f"[{number}/{len(pictures)}] {name} {first.image_size[0]}x{first.image_size[1]} px, "
            f"{first.grid[0]}x{first.grid[1]} crops: kept per position {kept}"
        )
        measurements.extend(results)
    compressor.crop_order = "packed"
    rows, summaries = summarize(measurements)
    stages = adapter.pruner.stages
    setup = {
        "model": adapter.describe(),
        "compressor": {"name": compressor.name, "params": compressor.params()},
        "ratio": float(cfg.ratio),
        "orders": list(options.orders),
        "prompt": options.prompt,
        "images": len(pictures),
        "source": "synthetic" if files is None else "files",
        "num_layers": len(adapter.pruner.layers),
        "final_layer": stages[-1].prune_layer,
        "stages": [asdict(stage) for stage in stages],
        "count_columns": "measurements' tokens / kept / attention lists: view 0 (thumbnail), views 1..n "
        "(crops, row-major), newlines, recycled tokens",
    }
    return {
        "setup": setup,
        "rows": rows,
        "summaries": [asdict(s) for s in summaries],
        "measurements": [asdict(m) for m in measurements],
        "_summaries": summaries,
    }


def main(options: Options) -> int:
    """The CLI command: table on stdout, the chart (and JSON), progress on stderr; exit status. Bad input
    raises a ``Gc2benchError`` (``cli.main`` reports it) before the model is loaded."""
    result = analyze_positional_bias(options)
    summaries = result.pop("_summaries")
    to_stdout = options.json_path == "-"
    print(format_table(result["setup"], result["rows"], summaries), file=sys.stderr if to_stdout else sys.stdout)
    path = plot_positional_bias(result["setup"], result["rows"], summaries, options.out)
    print(f"wrote {path}", file=sys.stderr)
    if options.json_path:
        text = json.dumps(result, default=str)
        if to_stdout:
            print(text)
        else:
            json_path = Path(options.json_path)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(text)
            print(f"wrote {json_path}", file=sys.stderr)
    return 0
