"""`gc2bench bench prefill`: measured LLM prefill time next to the analytic FLOPs, per method × ratio.

One process, one model with random weights: a preset (``presets.LLAVA_NEXT_PRESETS``,
``presets.LLAVA_ONEVISION_PRESETS``) or a directory holding a LLaVA-NeXT or LLaVA-OneVision
``config.json``. The config's model type decides the adapter (``ARCHITECTURES``): llava_next →
``LlavaNextAdapter``, llava_onevision → ``LlavaOneVisionAdapter``, each loaded as it is for runs
with only the weight loading replaced (``RandomWeightsAdapter``), so processor, vision tower,
score capture, compression, packing and the decoder pruner are the ones runs use.
Compressors are composed from ``conf/`` exactly as ``run.py`` does (``compressor=NAME
ratio=R``, plus ``compressor.num_layers`` where the config has it, so an unreachable PDrop /
SparseVLM ratio becomes an ``unreachable`` row before anything runs).

Vision towers without a CLS token (OneVision's SigLIP): a compressor whose config asks for a CLS
score (``cls_logit``, ``cls_softmax``, ``cls_softmax_fullwidth``) gets ``compressor.score=cosine``
automatically — the only score such a model serves and the one a run needs too (the AAAI
GlobalCom² paper's §4.3) — and the row lists it in ``overrides``. Any other compressor the
adapter rejects (``check_compressor``) becomes an ``unsupported`` row carrying the adapter's
message, which names the fix. FastV runs ``compressor.decode=static`` (its pruned prefill; the
default ``reselect`` keeps every token and masks, which saves nothing), also listed in ``overrides``.

Every method sees the same synthetic images and prompt, of the square grid pinpoint's size that
feeds the LLM the most visual tokens, fewest views on a tie (``bench_image_size``; LLaVA-NeXT:
2×2 crops + thumbnail; OneVision ``anyres_max_9``: 3×3 crops + base view, as larger square grids
are downsampled back to as many tokens). ``generate(max_new_tokens=1)`` is
one LLM forward, timed by the adapter (``SampleStats.prefill_ms``: wall clock around the
decoder stack, LM head excluded, CUDA synchronised). One untimed warm-up round over all
methods, then ``repeats`` rounds, each running every method once in a shuffled (seeded) order,
so that load drift on a shared machine hits all of them alike; figures are medians over rounds
× images. The objects alive after setup are frozen out of Python's garbage collector, which is
paused during each ``generate`` (a collection otherwise lands in a timed forward now and
then, 0.1–0.5 s each). On CPU the process CPU time of the same forward is recorded too (``prefill_cpu_ms``):
unlike wall time it does not grow while other jobs hold the cores.

Row fields: kept tokens = visual tokens entering the LLM (newlines included), and for LLM-stage
methods the layer-averaged image tokens; ``tflops`` / ``kv_cache_mb`` = ``flops.sample_tflops``
for the sample's actual tokens (text included, per-layer counts for LLM-stage methods, GQA's
key/value heads for Qwen2); ``speedup`` = prefill ms of ``none`` / this row's (``cpu_speedup``:
the same in CPU time); ``analytic_speedup`` = TFLOPs of ``none`` / this row's (the limit a
FLOP-bound prefill could reach); ``share_of_limit`` = their ratio (``cpu_share_of_limit``: in CPU
time); ``overhead_pct`` = the row's ``compression_ms`` (selection + packing) as % of ``none``'s
prefill; ``overrides`` = the ``conf/`` overrides beyond ``compressor=NAME ratio=R``; ``status`` =
ok | unreachable | unsupported (then ``reason``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gc2bench.efficiency.flops import DecoderShape, sample_tflops
from gc2bench.efficiency.presets import LLAVA_NEXT_PRESETS, LLAVA_ONEVISION_PRESETS, TEXT_PRESETS
from gc2bench.efficiency.timing import collector_paused
from gc2bench.errors import ConfigError
from gc2bench.models.llava_next import LlavaNextAdapter
from gc2bench.models.onevision import CLS_SCORES, LlavaOneVisionAdapter

PROMPT = "what is in the image?"
BUILDER_VERSION = 1
PRESETS = {**LLAVA_NEXT_PRESETS, **LLAVA_ONEVISION_PRESETS}
VISION_TOWER_NAMES = {"clip_vision_model": "CLIP", "siglip_vision_model": "SigLIP"}


# -- the model ------------------------------------------------------------------------------------


def _text_config(preset_name: str):
    from transformers import AutoConfig

    text = dict(TEXT_PRESETS[preset_name])
    return AutoConfig.for_model(text.pop("model_type"), **text)


def llava_next_preset_config(spec: dict):
    """``LlavaNextConfig`` of a ``LLAVA_NEXT_PRESETS`` entry (CLIP with CLS, penultimate layer, CLS dropped)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig

    vision = CLIPVisionConfig(image_size=spec["crop_size"], patch_size=spec["patch_size"], **spec["vision"])
    return LlavaNextConfig(
        vision_config=vision,
        text_config=_text_config(spec["text"]),
        image_grid_pinpoints=spec["grid_pinpoints"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def llava_onevision_preset_config(spec: dict):
    """``LlavaOnevisionConfig`` of a ``LLAVA_ONEVISION_PRESETS`` entry (SigLIP without CLS or head, last layer,
    all patches; as llava-hf/llava-onevision-qwen2-7b-ov-hf)."""
    from transformers import LlavaOnevisionConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        image_size=spec["crop_size"], patch_size=spec["patch_size"], vision_use_head=False, **spec["vision"]
    )
    text = _text_config(spec["text"])
    text.tie_word_embeddings = False
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=spec["grid_pinpoints"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=spec["vision_aspect_ratio"],
        projector_hidden_act="gelu",
    )


def preset_config(name: str):
    """The model config of a bench preset (image_token_id etc. are set when the directory is built)."""
    if name in LLAVA_ONEVISION_PRESETS:
        return llava_onevision_preset_config(LLAVA_ONEVISION_PRESETS[name])
    return llava_next_preset_config(LLAVA_NEXT_PRESETS[name])


def model_config(model: str):
    """Model config of a preset name or of a directory with a LLaVA-NeXT / LLaVA-OneVision config.json."""
    from transformers import AutoConfig

    if model in PRESETS:
        return preset_config(model)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {model}: not a preset ({', '.join(PRESETS)}) nor a directory with a config.json")
    config = AutoConfig.from_pretrained(str(path))
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(
            f"--model {model}: model_type={config.model_type!r}; bench prefill builds "
            f"{' or '.join(ARCHITECTURES)} models"
        )
    return config


def _use_tokenizer(config, tokenizer) -> None:
    """Point the config's image token, vocabulary and special ids at the byte-level tokenizer's."""
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = config.text_config
    text.vocab_size = max(text.vocab_size, 64 * ((len(tokenizer) + 63) // 64))
    text.bos_token_id, text.eos_token_id, text.pad_token_id = 1, 2, 3
    config.pad_token_id = 3


def llava_next_processor(config):
    """``LlavaNextProcessor`` for ``config`` (tiny LLaVA-NeXT's tokenizer and Vicuna-style template)."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from gc2bench.models.tiny import CHAT_TEMPLATE, _build_tokenizer

    tokenizer = _build_tokenizer()
    _use_tokenizer(config, tokenizer)
    crop = config.vision_config.image_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def llava_onevision_processor(config):
    """The image + text OneVision processor the adapter loads (``image_only_processor_class``) for ``config``,
    with the tiny OneVision's tokenizer and Qwen2-style template (as ``gc2bench.models.tiny_onevision``)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from gc2bench.models.onevision import image_only_processor_class
    from gc2bench.models.tiny_onevision import CHAT_TEMPLATE, _build_tokenizer_onevision

    tokenizer = _build_tokenizer_onevision()
    _use_tokenizer(config, tokenizer)
    config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    crop, patch = config.vision_config.image_size, config.vision_config.patch_size
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": crop, "width": crop}, image_grid_pinpoints=config.image_grid_pinpoints
    )
    return image_only_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(crop // patch) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
        chat_template=CHAT_TEMPLATE,
    )


def build_bench_dir(config, path: Path) -> Path:
    """Write ``config`` (token ids set to the byte-level tokenizer's) and its processor to ``path``; no weights:
    the ``RandomWeightsAdapter`` draws them."""
    processor = ARCHITECTURES[config.model_type].build_processor(config)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def bench_model_dir(model: str, cache_dir: Path | None = None) -> Path:
    """Directory (config + processor) for ``model``, built once under the gc2bench cache (atomic rename)."""
    from gc2bench.models.tiny import cached_build

    config = model_config(model)
    digest = hashlib.sha256((config.to_json_string() + str(BUILDER_VERSION)).encode()).hexdigest()[:10]
    kind = config.model_type.replace("_", "-")
    return cached_build(f"bench-{kind}-{digest}", lambda directory: build_bench_dir(config, directory), cache_dir)


@dataclass
class RandomWeights:
    """Stands in for a model class: ``from_pretrained(path)`` builds the model from the directory's config
    with weights drawn from ``seed``, directly on ``device``."""

    model_class: type
    device: torch.device
    seed: int = 0

    @property
    def __name__(self) -> str:
        return f"{self.model_class.__name__} (random weights)"

    def from_pretrained(self, path, revision=None, dtype=torch.float32, attn_implementation="sdpa"):
        config = self.model_class.config_class.from_pretrained(path, revision=revision)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), self.device:
            torch.manual_seed(self.seed)
            return self.model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)


class RandomWeightsAdapter:
    """Put in front of a model adapter (``class X(RandomWeightsAdapter, SomeAdapter)``): the adapter on a
    config-only directory, everything as for a checkpoint except that the weights are random (no weight
    files are written or read, so the 7B/13B shapes build in seconds on a GPU)."""

    def __init__(self, path: str, compressor, seed: int = 0, **kwargs):
        self.seed = seed
        super().__init__(path, compressor, **kwargs)

    @property
    def model_class(self):
        return RandomWeights(super().model_class, self.device, self.seed)

    def use_compressor(self, compressor) -> None:
        """Swap the compressor (and the decoder pruner of an LLM-stage one) as ``__init__`` sets them up."""
        from gc2bench.models.decoder_pruning import DecoderPruner

        self.check_compressor(compressor, self.name)
        if self.pruner is not None:
            self.pruner.remove()
        self.compressor, self.pruner = compressor, None
        if compressor.kind == "llm":
            self.pruner = DecoderPruner(self.model.model.language_model, compressor, seed=compressor.seed)


class RandomWeightsLlavaNextAdapter(RandomWeightsAdapter, LlavaNextAdapter):
    """``LlavaNextAdapter`` with random weights."""


class RandomWeightsOneVisionAdapter(RandomWeightsAdapter, LlavaOneVisionAdapter):
    """``LlavaOneVisionAdapter`` with random weights."""


@dataclass(frozen=True)
class Architecture:
    """How the benchmark builds one model type."""

    adapter_class: type  # a RandomWeightsAdapter
    build_processor: Callable  # (config) -> processor; sets the config's token ids to its tokenizer's
    vision_has_cls: bool  # False: compressors asking for a CLS score get compressor.score=cosine


ARCHITECTURES: dict[str, Architecture] = {
    "llava_next": Architecture(RandomWeightsLlavaNextAdapter, llava_next_processor, vision_has_cls=True),
    "llava_onevision": Architecture(RandomWeightsOneVisionAdapter, llava_onevision_processor, vision_has_cls=False),
}


@dataclass
class PrefillProbe:
    """What a prefill's LLM forward saw: the input length [tokens] and the process CPU time [ms]."""

    length: int = 0
    cpu_ms: float = 0.0


@contextmanager
def probed_prefills(adapter):
    """Within the block, ``probes`` collects a ``PrefillProbe`` per prefill (a forward of more than one position)
    of the adapter's LLM. CPU time = ``time.process_time`` (every thread of the process): time the process ran,
    not time it waited for the cores, so with one thread it is the work itself whatever else runs on the machine."""
    probes: list[PrefillProbe] = []

    def before(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            probes.append(PrefillProbe(int(embeds.shape[1]), -time.process_time()))

    def after(module, args, kwargs, output):
        if probes and probes[-1].cpu_ms < 0:
            probes[-1].cpu_ms = 1e3 * (time.process_time() + probes[-1].cpu_ms)

    model = adapter.model.model.language_model
    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield probes
    finally:
        for handle in handles:
            handle.remove()


def synthetic_images(count: int, size_hw: tuple[int, int], seed: int = 0) -> list:
    """``count`` RGB images [H, W]: smooth random colour fields plus fine noise (deterministic in ``seed``)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    height, width = size_hw
    images = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        field = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        pixels = (field + 0.15 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)
        images.append(Image.fromarray((255 * pixels.permute(1, 2, 0)).round().byte().numpy(), "RGB"))
    return images


def bench_image_size(adapter) -> tuple[int, int]:
    """(height, width) of the square grid pinpoint (any pinpoint where none is square) whose image feeds the LLM
    the most visual tokens by the adapter's layout, fewest views on a tie. LLaVA-NeXT: 2×2 crops; OneVision
    ``anyres_max_9``: 3×3 crops (bigger square grids are downsampled back to as many tokens from more views)."""
    pinpoints = [(int(h), int(w)) for h, w in adapter.config.image_grid_pinpoints]
    candidates = [hw for hw in pinpoints if hw[0] == hw[1]] or pinpoints

    def rank(hw):
        layout = adapter.layout(hw)
        return len(layout.packed_sources), -layout.num_views

    return max(candidates, key=rank)


# -- compressors ------------------------------------------------------------------------------------


@dataclass
class Method:
    """One row's compressor, composed from ``conf/``; ``compressor`` is None unless ``status`` is ok."""

    name: str
    ratio: float
    compressor: object | None
    overrides: list[str] = field(default_factory=list)  # beyond compressor=NAME ratio=R
    status: str = "ok"  # ok | unreachable | unsupported
    reason: str | None = None


def compose_compressor(name: str, ratio: float, num_layers: int, vision_has_cls: bool = True) -> Method:
    """The compressor as ``run.py`` composes it, plus ``compressor.num_layers`` where the config has it and,
    on a vision tower without CLS, ``compressor.score=cosine`` for a config asking for a CLS score;
    ``unreachable`` when the config rejects the ratio on this depth."""
    from gc2bench.config import build_compressor, compose_run_config

    base = [f"compressor={name}", f"ratio={ratio}"]
    cfg = compose_run_config(base, check=False)
    overrides = []
    if "num_layers" in cfg.compressor:
        overrides.append(f"compressor.num_layers={num_layers}")
    if not vision_has_cls and cfg.compressor.get("score") in CLS_SCORES:
        overrides.append("compressor.score=cosine")
    if cfg.compressor.get("decode") == "reselect":
        overrides.append("compressor.decode=static")  # FastV's pruned prefill, what saves compute
    if overrides:
        cfg = compose_run_config(base + overrides, check=False)
    try:
        return Method(name, ratio, build_compressor(cfg), overrides)
    except ConfigError as error:
        return Method(name, ratio, None, overrides, "unreachable", str(error))


def check_supported(method: Method, adapter) -> Method:
    """``method`` as ``unsupported`` (the adapter's message, which names the fix) if the model cannot serve it."""
    if method.compressor is not None:
        try:
            adapter.check_compressor(method.compressor, adapter.name)
        except ConfigError as error:
            method.compressor, method.status, method.reason = None, "unsupported", str(error)
    return method


# -- the benchmark ----------------------------------------------------------------------------------


def parse_list(text: str, what: str, convert):
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ConfigError(f"--{what} {text!r}: give a comma-separated list")
    try:
        return [convert(item) for item in items]
    except ValueError as error:
        raise ConfigError(f"--{what} {text!r}: {error}") from None


def bench_prefill_rows(
    model: str = "cpu_small",
    compressors=("none", "globalcom2"),
    ratios=(1.0, 0.5, 0.25, 0.1),
    repeats: int = 3,
    images: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    log=None,
) -> tuple[dict, list[dict]]:
    """(header, rows) of the benchmark; see the module docstring for the row fields."""
    from gc2bench.config import config_names, validate_ratio

    known = config_names("compressor")
    unknown = [name for name in compressors if name not in known]
    if unknown:
        raise ConfigError(f"--compressors: unknown {', '.join(unknown)} (available: {', '.join(known)})")
    ratios = [validate_ratio(r) for r in ratios]
    if repeats < 1 or images < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--repeats ({repeats}), --images ({images}) and --threads ({threads}) must be >= 1")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"--device {device}: cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA device")
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    log = log or (lambda message: print(message, file=sys.stderr))
    if threads is not None:
        torch.set_num_threads(threads)

    from gc2bench.compressors.none import NoCompression

    load_before = _load_average()
    directory = bench_model_dir(model)
    architecture = ARCHITECTURES[model_config(str(directory)).model_type]
    adapter = architecture.adapter_class(
        str(directory), NoCompression(), seed=seed, name=model, dtype=dtype, device=device
    )
    shape = DecoderShape.from_config(adapter.config)
    image_size = bench_image_size(adapter)
    pictures = synthetic_images(images, image_size, seed)

    methods = [Method("none", 1.0, NoCompression())]
    for name in dict.fromkeys(compressors):
        if name == "none":
            continue
        for ratio in ratios:
            method = compose_compressor(name, ratio, shape.num_layers, architecture.vision_has_cls)
            methods.append(check_supported(method, adapter))
    runnable = [index for index, method in enumerate(methods) if method.compressor is not None]
    samples = {index: [] for index in runnable}
    order = random.Random(seed)
    gc.collect()
    gc.freeze()
    with probed_prefills(adapter) as probes:
        for round_index in range(repeats + 1):
            for index in order.sample(runnable, len(runnable)):
                adapter.use_compressor(methods[index].compressor)
                for picture in pictures:
                    probes.clear()
                    with collector_paused(collect_first=True):
                        stats = adapter.generate([PROMPT], [[picture]], max_new_tokens=1, do_sample=False)[0].stats
                    if round_index:  # round 0 is the warm-up
                        samples[index].append((stats, probes[0]))
            log(f"round {round_index}/{repeats} done" + (" (warm-up)" if not round_index else ""))
    gc.unfreeze()
    adapter.use_compressor(NoCompression())
    on_cpu = adapter.device.type == "cpu"

    rows = [_row(method, samples.get(i, []), adapter.config, on_cpu) for i, method in enumerate(methods)]
    reference = rows[0]
    for row in rows:
        if row["status"] != "ok":
            continue
        row["speedup"] = reference["prefill_ms"] / row["prefill_ms"]
        row["analytic_speedup"] = reference["tflops"] / row["tflops"]
        row["share_of_limit"] = row["speedup"] / row["analytic_speedup"]
        if on_cpu:
            row["cpu_speedup"] = reference["prefill_cpu_ms"] / row["prefill_cpu_ms"]
            row["cpu_share_of_limit"] = row["cpu_speedup"] / row["analytic_speedup"]
        row["overhead_pct"] = 100 * row["compression_ms"] / reference["prefill_ms"]
    vision = adapter.config.vision_config
    header = {
        "model": model,
        "architecture": adapter.config.model_type,
        "device": str(adapter.device),
        "dtype": dtype,
        "machine": _machine(adapter.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "llm": shape.sizes(),
        "vision": {
            "model_type": vision.model_type,
            "hidden_size": vision.hidden_size,
            "num_layers": vision.num_hidden_layers,
            "crop_size": vision.image_size,
            "patch_size": vision.patch_size,
        },
        "image_size": list(image_size),
        "images": images,
        "repeats": repeats,
        "runnable": len(runnable),
        "load_average_1min": [load_before, _load_average()],
    }
    return header, rows


def _row(method: Method, samples, config, on_cpu: bool) -> dict:
    row = {"method": method.name, "ratio": method.ratio, "status": method.status, "overrides": method.overrides}
    if method.status != "ok":
        row["reason"] = method.reason
        return row
    stats = [s for s, _ in samples]
    text = [probe.length - s.visual_tokens_kept for s, probe in samples]
    costs = [sample_tflops(config, s.visual_tokens_kept, t, s.image_tokens_per_layer) for s, t in zip(stats, text)]
    averaged = [s.layer_averaged_image_tokens for s in stats]
    prefill = [s.prefill_ms for s in stats]
    row.update(
        visual_tokens_before=statistics.mean(s.visual_tokens_before for s in stats),
        visual_tokens_kept=statistics.mean(s.visual_tokens_kept for s in stats),
        layer_averaged_image_tokens=None if averaged[0] is None else statistics.mean(averaged),
        text_tokens=statistics.mean(text),
        tflops=statistics.mean(c["tflops"] for c in costs),
        kv_cache_mb=statistics.mean(c["kv_cache_mb"] for c in costs),
        prefill_ms=statistics.median(prefill),
        prefill_ms_min=min(prefill),
        prefill_ms_samples=prefill,
        prefill_cpu_ms=statistics.median(probe.cpu_ms for _, probe in samples) if on_cpu else None,
        compression_ms=statistics.median(s.compression_ms for s in stats),
        vision_ms=statistics.median(s.vision_ms for s in stats),
    )
    return row


def _load_average() -> float | None:
    """The 1-minute load average (how busy a shared machine was), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(header: dict, rows: list[dict]) -> str:
    llm, vision = header["llm"], header["vision"]
    gqa = f"/{llm['num_kv_heads']}" if llm["num_kv_heads"] != llm["num_heads"] else ""
    tower = VISION_TOWER_NAMES.get(vision.get("model_type"), vision.get("model_type"))
    lines = [
        f"# {header['model']}: LLM d={llm['hidden_size']} m={llm['intermediate_size']} L={llm['num_layers']} "
        f"heads={llm['num_heads']}{gqa}; {tower} {vision['num_layers']}x{vision['hidden_size']}, "
        f"{vision['crop_size']}-px crops; {header['dtype']} on {header['device']} ({header['machine']}, "
        f"{header['threads']} threads, torch {header['torch']})",
        f"# {header['images']} synthetic image(s) {header['image_size'][1]}x{header['image_size'][0]}; median of "
        f"{header['repeats']} rounds (methods in shuffled order) after 1 warm-up round; TFLOPs: analytic, text "
        f"tokens included; load average {' -> '.join(_fmt(v, '.2f') for v in header['load_average_1min'])}",
        f"{'method':<12} {'R':>5} {'kept':>5} {'layer avg':>9} {'TFLOPs':>7} {'KV MB':>6} {'prefill ms':>10} "
        f"{'speedup':>7} {'cpu ms':>7} {'cpu speedup':>11} {'limit':>6} {'of limit':>8} {'(cpu)':>6} "
        f"{'compress ms':>11} {'% prefill':>9}",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['method']:<12} {row['ratio']:>5.2f} {row['status']}: {row['reason']}")
            continue
        cpu = row.get("prefill_cpu_ms")
        cpu_share = 100 * row["cpu_share_of_limit"] if cpu else None
        lines.append(
            f"{row['method']:<12} {row['ratio']:>5.2f} {row['visual_tokens_kept']:>5.0f} "
            f"{_fmt(row['layer_averaged_image_tokens'], '9.1f'):>9} {row['tflops']:>7.4g} {row['kv_cache_mb']:>6.2f} "
            f"{row['prefill_ms']:>10.1f} {row['speedup']:>6.2f}x {_fmt(cpu, '7.1f'):>7} "
            f"{_fmt(row.get('cpu_speedup'), '10.2f'):>10}x {row['analytic_speedup']:>5.2f}x "
            f"{100 * row['share_of_limit']:>7.1f}% {_fmt(cpu_share, '5.1f'):>5}% "
            f"{row['compression_ms']:>11.2f} {row['overhead_pct']:>8.2f}%"
        )
    cosine = list(dict.fromkeys(r["method"] for r in rows if "compressor.score=cosine" in r["overrides"]))
    if cosine:
        lines.append(f"# compressor.score=cosine for {', '.join(cosine)}: the {tower} tower has no CLS token")
    ours = [r for r in rows if r["method"] == "globalcom2" and r["status"] == "ok"]
    if ours:
        low = min(ours, key=lambda r: r["ratio"])
        cpu = (
            f", CPU time {low['cpu_speedup']:.2f}x ({100 * low['cpu_share_of_limit']:.1f}%)"
            if low.get("cpu_speedup")
            else ""
        )
        lines.append(
            f"# GlobalCom² R={low['ratio']:g}: {low['speedup']:.2f}x measured of "
            f"{low['analytic_speedup']:.2f}x analytic ({100 * low['share_of_limit']:.1f}% of the limit){cpu}; "
            f"selection + packing "
            f"{low['compression_ms']:.2f} ms = {low['overhead_pct']:.3f}% of the uncompressed prefill"
        )
    return "\n".join(lines)


def bench_prefill(
    model: str = "cpu_small",
    compressors: str | None = None,
    ratios: str = "1,0.5,0.25,0.1",
    repeats: int = 3,
    images: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    threads: int | None = None,
    as_json: bool = False,
) -> int:
    """The CLI command: print the table (or one JSON list of rows); a ConfigError on bad input. ``compressors``:
    comma-separated conf/compressor names (default ``gc2bench.bench.PREFILL_COMPRESSORS``)."""
    from gc2bench.bench import PREFILL_COMPRESSORS

    compressors = ",".join(PREFILL_COMPRESSORS) if compressors is None else compressors
    header, rows = bench_prefill_rows(
        model,
        parse_list(compressors, "compressors", str),
        parse_list(ratios, "ratios", float),
        repeats=repeats,
        images=images,
        device=device,
        dtype=dtype,
        threads=threads,
    )
    if as_json:
        print(json.dumps([dict(row, setup=header) for row in rows]))
    else:
        print(format_table(header, rows))
    return 0
