"""`gc2bench inspect`: one image through one model and compressor, as JSON (and a figure).

    gc2bench inspect image=photo.jpg prompt="What is this?" compressor=globalcom2 ratio=0.1 viz=kept.png
    gc2bench inspect image=photo.jpg prompt="What is this?" protocol=llava_eval

``image``, ``prompt``, ``viz``, ``max_new_tokens`` and ``protocol`` are inspect's own keys; every
other argument is a Hydra override of the run config (conf/config.yaml), exactly as for run.py.
``prompt`` is rendered as the evaluation protocol renders a benchmark question (``protocol=``,
else ``suite.protocol``; docs/protocols.md); the report shows the rendered ``prompt`` and what the
checkpoint's own chat template would have made of it (``checkpoint_prompt``).
"""

from __future__ import annotations

import json
import sys

OWN_KEYS = {"image": None, "prompt": "Describe the image.", "viz": None, "max_new_tokens": "16", "protocol": None}


class InspectError(ValueError):
    pass


def split_arguments(argv: list[str]) -> tuple[dict, list[str]]:
    own, overrides = dict(OWN_KEYS), []
    for argument in argv:
        key, _, value = argument.partition("=")
        if key in OWN_KEYS and "=" in argument:
            own[key] = value
        else:
            overrides.append(argument)
    if not own["image"]:
        raise InspectError("image=PATH is required (e.g. gc2bench inspect image=photo.jpg prompt=\"What is this?\")")
    try:
        own["max_new_tokens"] = int(own["max_new_tokens"])
    except ValueError:
        raise InspectError(f"max_new_tokens={own['max_new_tokens']} is not an integer") from None
    return own, overrides


def load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise InspectError(f"image={path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InspectError(f"image={path}: cannot read image ({error})") from None


def inspect(argv: list[str]) -> dict:
    """Run one image and return the JSON-ready report (also writes the figure if ``viz=``)."""
    from omegaconf import OmegaConf

    from gc2bench.config import compose_run_config
    from gc2bench.evaluation.lmms_model import decoded
    from gc2bench.evaluation.protocols import checkpoint_prompt, get_protocol
    from gc2bench.models.adapter import to_rgb
    from gc2bench.run import build_compressor, build_model

    own, overrides = split_arguments(argv)
    cfg = compose_run_config(overrides)
    protocol = get_protocol(own["protocol"] or cfg.suite.get("protocol"))
    image = to_rgb(load_image(own["image"]))
    compressor = build_compressor(cfg)
    adapter = build_model(cfg, compressor)
    result = adapter.generate([own["prompt"]], [[image]], protocol=protocol.name, max_new_tokens=own["max_new_tokens"],
                              do_sample=False)[0]
    layout, kept = adapter.last_selection[0]
    stats = result.stats
    report = {
        "image": own["image"], "image_size": [image.height, image.width], "grid": list(layout.grid),
        "model": adapter.describe(), "compressor": {"name": compressor.name, "params": compressor.params()},
        "schedule": (compressor.schedule_info(len(adapter.pruner.layers))
                     if adapter.pruner is not None and hasattr(compressor, "schedule_info") else None),
        "visual_tokens_before": stats.visual_tokens_before, "visual_tokens_kept": stats.visual_tokens_kept,
        "newline_tokens": stats.newline_tokens_kept, "newline_tokens_before": stats.newline_tokens_before,
        "kept_per_view": stats.kept_per_view[0], "crop_budgets": stats.crop_budgets[0] if stats.crop_budgets else None,
        "ratio_convention": stats.ratio_convention, "protocol": protocol.name,
        "template": protocol.template_name(adapter), "prompt": result.prompt,
        "checkpoint_prompt": checkpoint_prompt(adapter, own["prompt"], 1),
        "answer": protocol.postprocess(decoded(result), []),
        "image_tokens_per_layer": stats.image_tokens_per_layer,
        "layer_averaged_image_tokens": stats.layer_averaged_image_tokens,
        "timing_ms": {"vision": stats.vision_ms, "compression": stats.compression_ms, "prefill": stats.prefill_ms,
                      "decode": stats.decode_ms},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if own["viz"]:
        from gc2bench.results.plots import draw_kept_tokens

        ratio = compressor.params().get("ratio", 1.0)
        title = (f"{compressor.name} R={ratio:g}: {stats.visual_tokens_kept}/{stats.visual_tokens_before} "
                 f"visual tokens kept")
        report["viz"] = str(draw_kept_tokens(image, layout, kept, own["viz"], title))
    return report


def main(argv: list[str]) -> int:
    from gc2bench.config import ConfigError
    from gc2bench.models.adapter import ModelLoadError

    try:
        report = inspect(argv)
    except (InspectError, ConfigError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, default=str))
    return 0
