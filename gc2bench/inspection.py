"""`gc2bench inspect`: one image through one model and compressor, as JSON (and a figure).

    gc2bench inspect image=photo.jpg prompt="What is this?" compressor=globalcom2 ratio=0.1 viz=kept.png
    gc2bench inspect image=photo.jpg prompt="What is this?" protocol=llava_eval

``image``, ``prompt``, ``viz``, ``max_new_tokens`` and ``protocol`` are inspect's own keys; every
other argument is a Hydra override of the run config (conf/config.yaml), exactly as for run.py.
``prompt`` is rendered as the evaluation protocol renders a benchmark question (``protocol=``,
else ``suite.protocol``; docs/protocols.md); the report shows the rendered ``prompt`` and what the
checkpoint's own chat template would have made of it (``checkpoint_prompt``).

``viz=PATH`` draws what entered the LLM: the vision-stage selection, and for an LLM-stage method one
row per pruning stage (what the decoder kept from that layer on), titled with the records'
equivalent image tokens (``EQUIVALENT_CONVENTION``) without and with the newline tokens.
"""

from __future__ import annotations

import json
import sys

from gc2bench.errors import ConfigError

OWN_KEYS = {"image": None, "prompt": "Describe the image.", "viz": None, "max_new_tokens": "16", "protocol": None}


def split_arguments(argv: list[str]) -> tuple[dict, list[str]]:
    own, overrides = dict(OWN_KEYS), []
    for argument in argv:
        key, _, value = argument.partition("=")
        if key in OWN_KEYS and "=" in argument:
            own[key] = value
        else:
            overrides.append(argument)
    if not own["image"]:
        raise ConfigError('image=PATH is required (e.g. gc2bench inspect image=photo.jpg prompt="What is this?")')
    try:
        own["max_new_tokens"] = int(own["max_new_tokens"])
    except ValueError:
        raise ConfigError(f"max_new_tokens={own['max_new_tokens']} is not an integer") from None
    return own, overrides


def load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ConfigError(f"image={path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"image={path}: cannot read image ({error})") from None


def equivalent_counts(stats) -> dict:
    """The record's equivalent-token keys for one sample (``gc2bench.evaluation.suite.equivalent_tokens``,
    ``EQUIVALENT_CONVENTION``): layer-averaged image tokens and share, with and without newlines."""
    from dataclasses import asdict

    from gc2bench.evaluation.suite import equivalent_tokens

    return equivalent_tokens([asdict(stats)], lambda key, rows: rows[0].get(key))


def kept_title(compressor, counts: dict, stats, num_layers: int) -> str:
    """The picture's title: the method, R, and ``counts`` (``equivalent_counts``) in the records' words."""
    ratio = compressor.params().get("ratio", 1.0)
    before, newlines_before = stats.visual_tokens_before, stats.newline_tokens_before
    what = (
        f"image tokens entering the LLM, averaged over its {num_layers} layers"
        if stats.image_tokens_per_layer
        else "image tokens entering the LLM"
    )
    tokens, share = counts["equivalent_image_tokens"], counts["equivalent_share"]
    with_newlines = f"{round(tokens, 2):g} of {before} with newlines ({share:.1%})"
    without = counts.get("equivalent_image_tokens_without_newlines")
    if without is None:
        return f"{compressor.name} R={ratio:g}: {what}\n{with_newlines}"
    share_without = counts.get("equivalent_share_without_newlines")
    share_without = "" if share_without is None else f" ({share_without:.1%})"
    return (
        f"{compressor.name} R={ratio:g}: {what}\n{round(without, 2):g} of {before - newlines_before} without "
        f"newlines{share_without} · {with_newlines}"
    )


def _count_line(sources, others: str = "") -> str:
    """``sources`` [M]: "n image tokens (m merged, not drawn) + k newlines" and ``others``."""
    from gc2bench.compressors.base import NEWLINE

    summaries, newlines = int((sources < NEWLINE).sum()), int((sources == NEWLINE).sum())
    merged = f" ({summaries} merged, not drawn)" if summaries else ""
    return f"{len(sources) - newlines} image tokens{merged} + {newlines} newline{'s' if newlines != 1 else ''}{others}"


def kept_stages(adapter, compressor, stats) -> tuple[list, list[dict]]:
    """Picture panels (``KeptPanel``) of the one inspected image and, per LLM pruning stage, its counts.

    A vision-stage selection gets a panel when it dropped anything (or there is no LLM stage); each
    pruning stage gets one from the decoder pruner's ``PrefillPlan.kept_positions`` (the prompt
    position of every token after the stage), mapped back to token sources through the image's
    positions in the prompt.
    """
    import torch

    from gc2bench.compressors.base import NEWLINE, SEGMENT_RECYCLED, VIEW_SUMMARY
    from gc2bench.results.plots import KeptPanel

    layout, sources = adapter.last_selection[0]
    patches = int((sources >= 0).sum())
    budgets = stats.crop_budgets[0] if stats.crop_budgets else None
    ratio = compressor.params().get("ratio")
    panels, stages = [], []
    if adapter.pruner is None or patches < int((layout.packed_sources >= 0).sum()):
        label = "vision stage: " + _count_line(sources)
        panels.append(KeptPanel(label, sources, budgets, ratio if budgets is not None else None))
    if adapter.pruner is None:
        return panels, stages
    plan, pruner = adapter.last_plan, adapter.pruner
    positions = plan.image[0].nonzero().squeeze(1).cpu()
    if len(positions) != len(sources) or len(plan.kept_positions) != len(pruner.stages):
        raise RuntimeError(
            f"inspect: {len(positions)} image positions in the prompt for {len(sources)} kept "
            f"sources, {len(plan.kept_positions)} recorded stages of {len(pruner.stages)}"
        )
    text = VIEW_SUMMARY - layout.num_views  # below every source and view summary: a text position
    source_at = torch.full((plan.image.shape[1],), text, dtype=torch.long)
    source_at[positions] = sources
    segment_budgets = plan.segment_budgets[0].tolist() if plan.segment_budgets is not None else None
    starts = [stage.prune_layer for stage in pruner.stages]
    for number, (stage, kept_positions) in enumerate(zip(pruner.stages, plan.kept_positions)):
        kept = kept_positions[0].cpu()
        kept = source_at[kept[kept >= 0]]
        kept = kept[kept != text]
        recycled = int((plan.kept_segments[number][0] == SEGMENT_RECYCLED).sum())
        last = min([start for start in starts if start > stage.prune_layer], default=len(pruner.layers)) - 1
        layers = f"layer {last}" if last == stage.prune_layer else f"layers {stage.prune_layer}–{last}"
        counts = {
            "layers": [stage.prune_layer, last],
            "image_tokens": int((kept != NEWLINE).sum()),
            "newline_tokens": int((kept == NEWLINE).sum()),
            "recycled_tokens": recycled,
        }
        stages.append(counts)
        others = f" + {recycled} recycled (not drawn)" if recycled else ""
        if pruner.reselect:
            others += " at prefill (decode=reselect: each generated token selects anew)"
        label = f"LLM {layers} (stage {number + 1}): " + _count_line(kept, others)
        panels.append(
            KeptPanel(
                label,
                kept,
                None if segment_budgets is None else segment_budgets[1:],
                None if segment_budgets is None else segment_budgets[0],
            )
        )
    return panels, stages


def inspect_with_figure(argv: list[str]) -> tuple[dict, object]:
    """Run one image; the JSON-ready report and, with ``viz=``, the matplotlib figure it wrote."""
    from omegaconf import OmegaConf

    from gc2bench.config import build_compressor, build_model, compose_run_config
    from gc2bench.evaluation.lmms_model import decoded
    from gc2bench.evaluation.suite import check_suite
    from gc2bench.models.adapter import to_rgb
    from gc2bench.prompting import checkpoint_prompt, get_protocol

    own, overrides = split_arguments(argv)
    cfg = compose_run_config(overrides)
    check_suite(cfg)
    protocol = get_protocol(own["protocol"] or cfg.suite.get("protocol"))
    image = to_rgb(load_image(own["image"]))
    compressor = build_compressor(cfg)
    adapter = build_model(cfg, compressor)
    result = adapter.generate(
        [own["prompt"]], [[image]], protocol=protocol.name, max_new_tokens=own["max_new_tokens"], do_sample=False
    )[0]
    layout = adapter.last_selection[0][0]
    stats = result.stats
    num_layers = adapter.config.text_config.num_hidden_layers
    counts = equivalent_counts(stats)
    panels, stages = kept_stages(adapter, compressor, stats)
    title = kept_title(compressor, counts, stats, num_layers)
    report = {
        "image": own["image"],
        "image_size": [image.height, image.width],
        "grid": list(layout.grid),
        "model": adapter.describe(),
        "compressor": {"name": compressor.name, "params": compressor.params()},
        "schedule": (compressor.schedule_info(num_layers) if adapter.pruner is not None else None),
        "visual_tokens_before": stats.visual_tokens_before,
        "visual_tokens_kept": stats.visual_tokens_kept,
        "newline_tokens": stats.newline_tokens_kept,
        "newline_tokens_before": stats.newline_tokens_before,
        "kept_per_view": stats.kept_per_view[0],
        "crop_budgets": stats.crop_budgets[0] if stats.crop_budgets else None,
        "ratio_convention": stats.ratio_convention,
        "protocol": protocol.name,
        "template": protocol.template_name(adapter),
        "prompt": result.prompt,
        "checkpoint_prompt": checkpoint_prompt(adapter, own["prompt"], 1),
        "answer": protocol.postprocess(decoded(result), []),
        "image_tokens_per_layer": stats.image_tokens_per_layer,
        "layer_averaged_image_tokens": stats.layer_averaged_image_tokens,
        **counts,
        "llm_stages": stages or None,
        "title": title,
        "timing_ms": {
            "vision": stats.vision_ms,
            "compression": stats.compression_ms,
            "prefill": stats.prefill_ms,
            "decode": stats.decode_ms,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    figure = None
    if own["viz"]:
        from gc2bench.results.plots import draw_kept_tokens, kept_tokens_figure

        figure = kept_tokens_figure(image, layout, panels, title)
        report["viz"] = str(draw_kept_tokens(own["viz"], figure))
    return report, figure


def inspect(argv: list[str]) -> dict:
    """Run one image and return the JSON-ready report (also writes the figure if ``viz=``)."""
    return inspect_with_figure(argv)[0]


def main(argv: list[str]) -> int:
    report = inspect(argv)
    print(json.dumps(report, default=str, indent=2 if sys.stdout.isatty() else None))
    return 0
