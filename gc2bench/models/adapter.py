"""What every vision-stage model adapter shares: loading, prompting, compression between the
vision tower and the LLM, and generation through transformers' own ``generate``.

Per batch, ``VisionStageAdapter.generate``
1. runs the processor (images converted to RGB first),
2. asks the subclass for per-view features and the per-view scores the compressor requests
   (``encode_views``; the subclass owns every hook into the vision tower),
3. asks the compressor which token sources to emit (``Selection``) and packs them; a merging
   compressor (``ScoreRequest.merge_inputs``) also gets each view's keys and projector inputs
   (``encode_views_for_merging``) and returns the projector inputs of its emitted tokens
   (``Selection.replacement_features``), which are projected instead of gathered (``pack_replaced``),
4. shrinks each image's run of image placeholders to the kept count and calls ``generate``
   with the kept features through ``mm_encoder_outputs``; transformers is not patched.
Subclasses define ``model_class``, ``layout``, ``encode_views`` and, if their packing is not
a plain gather of view tokens, ``pack``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from gc2bench.compressors.base import MergeInputs, ScoreKind, ScoreRequest, gather_tokens
from gc2bench.config import ConfigError, check_model_path
from gc2bench.efficiency.flops import sample_tflops
from gc2bench.efficiency.timing import PrefillTimer, collector_paused, now, peak_memory_mb, reset_peak_memory
from gc2bench.errors import ModelLoadError
from gc2bench.layout import NEWLINE, source_views
from gc2bench.models.hub import check_hub_checkpoint

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


EQUIVALENT_CONVENTION = (
    "equivalent_image_tokens: image-block tokens (thumbnail, crops, newlines, recycled) entering each LLM "
    "layer at prefill, averaged over the layers (vision-stage methods: the kept count at every layer); "
    "equivalent_share: that / the sample's uncompressed image block (visual_tokens_before); "
    "*_without_newlines: both with image_newline tokens left out"
)


@dataclass
class SampleStats:
    """Token accounting and timings of one prompt (images of the prompt summed)."""

    visual_tokens_before: int = 0
    visual_tokens_kept: int = 0
    newline_tokens_before: int = 0
    newline_tokens_kept: int = 0
    kept_per_view: list[list[int]] = field(default_factory=list)
    crop_budgets: list[list[float]] | None = None
    ratio_convention: str = ""
    image_tokens_per_layer: list[int] | None = None  # LLM-stage methods: image tokens entering each layer
    layer_averaged_image_tokens: float | None = None  # their mean over layers ("equivalent" count)
    # Every method (EQUIVALENT_CONVENTION): image-block tokens entering the LLM, averaged over its layers
    # (vision-stage: the kept count at every layer), newlines counted; and the newlines among them.
    equivalent_image_tokens: float | None = None
    equivalent_newline_tokens: float | None = None
    llm_input_tokens: int = 0  # prompt tokens entering the LLM (text + visual)
    analytic_tflops: float = 0.0  # LLM prefill FLOPs of this prompt (gc2bench.efficiency.flops)
    kv_cache_mb: float = 0.0  # its prefill KV cache, fp16, 10^6 bytes
    vision_ms: float = 0.0
    compression_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    peak_memory_mb: float | None = None  # CUDA: peak allocated during the prompt's batch; CPU: None
    new_tokens: int = 0
    warmup: bool = False  # answered in the adapter's first batch (cold; not timed)


@dataclass
class Generation:
    text: str
    stats: SampleStats
    token_ids: list[int] = field(default_factory=list)
    scores: torch.Tensor | None = None  # [steps, vocab] logits, when generate(output_scores=True)
    raw_text: str | None = None  # the decoded answer before ``text``'s strip
    prompt: str | None = None  # the rendered prompt the model was given


def feature_scores(kind: ScoreKind, features: torch.Tensor) -> torch.Tensor:
    """Per-view scores [V, N] float32 of a kind that needs only the projector inputs ``features`` [V, N, C]
    (``FEATURE_SCORES``): ``cosine`` = −cos(x_i, mean_j x_j), computed in the dtype of ``features``;
    ``norm`` = ‖x_i‖₂, computed in float32."""
    if kind == ScoreKind.COSINE:
        return -torch.nn.functional.cosine_similarity(features, features.mean(1, keepdim=True), dim=-1).float()
    if kind == ScoreKind.NORM:
        return torch.linalg.vector_norm(features.float(), dim=-1)
    raise ValueError(f"score kind {kind} needs more than the projector inputs")


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: grey, palette, CMYK, alpha (composited on white), 16/32-bit, float."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0
        elif values.size and values.max() > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def with_bos(input_ids: torch.Tensor, attention_mask: torch.Tensor, bos: int, pad: int | None):
    """Left-padded ``input_ids`` / ``attention_mask`` [B, L] with ``bos`` before each row's first token
    where it is not already there ([B, L + 1] if any row gained it)."""
    lengths = attention_mask.sum(dim=1)
    first = input_ids.gather(1, (input_ids.shape[1] - lengths).clamp(max=input_ids.shape[1] - 1)[:, None])[:, 0]
    missing = (first != bos) | (lengths == 0)
    if not bool(missing.any()):
        return input_ids, attention_mask
    batch, length = input_ids.shape
    ids = torch.full((batch, length + 1), bos if pad is None else pad, dtype=input_ids.dtype)
    mask = torch.zeros((batch, length + 1), dtype=attention_mask.dtype)
    ids[:, 1:], mask[:, 1:] = input_ids, attention_mask
    for row in missing.nonzero()[:, 0].tolist():
        start = length - int(lengths[row])
        ids[row, start], mask[row, start] = bos, 1
    return ids, mask


class VisionStageAdapter:
    """A transformers multimodal checkpoint (hub id or local path) plus a vision-stage compressor."""

    model_class: type = None  # set by subclasses, e.g. LlavaNextForConditionalGeneration

    pipelines: tuple = ("transformers",)  # model.pipeline values this adapter serves (gc2bench.layout.PIPELINES)
    score_kinds: frozenset = frozenset(ScoreKind)  # the ScoreRequest kinds this adapter computes
    missing_scores: str = ""  # why the other kinds are not served and what to use instead (for the error line)

    def __init__(
        self,
        path: str,
        compressor,
        name: str | None = None,
        revision: str | None = None,
        dtype: str = "float16",
        device: str | None = "auto",
        attn_implementation: str = "sdpa",
        pipeline: str = "transformers",
    ):
        path = str(path)
        if pipeline not in self.pipelines:
            raise ConfigError(f"model.pipeline={pipeline!r}: {type(self).__name__} serves {' | '.join(self.pipelines)}")
        self.pipeline = pipeline
        self.check_compressor(compressor, name or path)
        check_model_path(path)
        check_hub_checkpoint(path, revision)
        if dtype not in DTYPES:
            raise ConfigError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
        self.name = name or path
        self.path = path
        self.revision = revision
        self.device = resolve_device(device)
        self.compressor = compressor
        try:
            self.processor = self.load_processor(path, revision)
            self.model = (
                self.model_class.from_pretrained(
                    path, revision=revision, dtype=DTYPES[dtype], attn_implementation=attn_implementation
                )
                .to(self.device)
                .eval()
            )
        except OSError as error:
            raise ModelLoadError(
                f"model.path={path}: could not load a {self.model_class.__name__} checkpoint "
                f"({str(error).splitlines()[0]})"
            ) from error
        self.config = self.model.config
        self._check_score_layer(compressor.score_request)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.image_token_id = self.config.image_token_id
        self._prefill_timer = PrefillTimer(self.device).attach(self.model.model.language_model)
        self.batches_answered = 0
        self.pruner = None
        if compressor.kind == "llm":
            from gc2bench.models.decoder_pruning import DecoderPruner

            self.pruner = DecoderPruner(self.model.model.language_model, compressor, seed=compressor.seed)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "revision": self.revision,
            "architecture": self.model_class.__name__,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.device),
            "attn_implementation": self.config._attn_implementation,
            "pipeline": self.pipeline,
        }

    def prompt(self, text: str, num_images: int) -> str:
        """The checkpoint's chat template around ``num_images`` images followed by ``text``."""
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    # -- model-specific -------------------------------------------------------------------------

    def _check_score_layer(self, request: ScoreRequest) -> None:
        """A ConfigError naming ``compressor.layer`` when it does not index the vision tower's layers."""
        layers = self.config.vision_config.num_hidden_layers
        if request.kind != "none" and not -layers <= request.layer < layers:
            raise ConfigError(
                f"compressor.layer={request.layer} is out of range: {self.name}'s vision tower has "
                f"{layers} layers (use -{layers}..{layers - 1}; -1 is the last)"
            )

    def check_compressor(self, compressor, model_name: str) -> None:
        """A ConfigError if this model cannot serve the compressor's score request (``score_kinds``); checked when
        the adapter is built and before each batch is compressed (a compressor may be swapped in)."""
        kind = compressor.score_request.kind
        if kind not in self.score_kinds:
            served = ", ".join(k for k in ScoreKind if k in self.score_kinds)
            reason = self.missing_scores or f"serves only {served} scores"
            raise ConfigError(
                f"compressor {compressor.name!r} asks for a {kind} score, but model {model_name!r} {reason}"
            )

    def load_processor(self, path: str, revision: str | None):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, revision=revision)

    def processor_images(self, images: list[list]):
        """Images as the processor takes them: a flat list (each image gets full AnyRes)."""
        return [image for group in images for image in group] or None

    def layout(self, image_size_hw):
        raise NotImplementedError

    def layouts(self, inputs) -> list:
        """Layouts of every image of a processor output, in order."""
        return [self.layout(size) for size in inputs["image_sizes"].tolist()]

    def processor_token_count(self, layout) -> int:
        """How many image placeholders the processor put in the prompt for ``layout``'s image."""
        return len(layout.packed_sources)

    def encode_views(self, pixel_values: torch.Tensor, request: ScoreRequest):
        """Per-view projected features [V, N, D] and the requested per-view scores [V, N] (or None)."""
        raise NotImplementedError

    def pack(self, view_features: torch.Tensor, token_sources: torch.Tensor, layout) -> torch.Tensor:
        """LLM input features [M, D] of one image from its view features [V, N, D] and sources [M]."""
        return gather_tokens(view_features, self.model.model.image_newline, token_sources)

    def encode_views_for_merging(self, pixel_values: torch.Tensor, request: ScoreRequest, layouts: list):
        """(None, scores [V, N], keys [V, N, K], projector inputs [V, N, C]) of every view for a merging
        compressor (``ScoreRequest.merge_inputs``): no projected features, since such a compressor
        supplies every emitted token's projector input (``Selection.replacement_features``)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve compressors that merge tokens")

    def pack_replaced(self, token_sources: torch.Tensor, replacement_features: torch.Tensor) -> torch.Tensor:
        """LLM input features [M, D] of one image whose emitted tokens come from a compressor's
        projector inputs [M, C] (``Selection.replacement_features``; NEWLINE rows get ``image_newline``)."""
        projector = self.model.model.multi_modal_projector
        tokens = projector(replacement_features.to(self.device, self.model.dtype))
        tokens[token_sources == NEWLINE] = self.model.model.image_newline.to(tokens.dtype)
        return tokens

    # -- generation ---------------------------------------------------------------------------

    def model_inputs(self, prompts: list[str], images: list[list], add_bos: bool = False):
        """The processor's output for rendered ``prompts`` and RGB ``images``; with ``add_bos`` each row
        starts with the tokenizer's BOS id (put in front of rows whose tokenizer added none)."""
        inputs = self.processor(images=self.processor_images(images), text=prompts, padding=True, return_tensors="pt")
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None:
            inputs["input_ids"], inputs["attention_mask"] = with_bos(
                inputs["input_ids"], inputs["attention_mask"], bos, self.tokenizer.pad_token_id
            )
        return inputs

    def render(self, texts: list[str], images: list[list], protocol: str | None = None) -> tuple[list[str], bool]:
        """(prompts, add_bos): ``texts`` in the checkpoint's chat template, or, with ``protocol``, as that
        evaluation protocol renders a benchmark context (gc2bench.prompting)."""
        if protocol is None:
            return [self.prompt(text, len(imgs)) for text, imgs in zip(texts, images)], False
        from gc2bench.prompting import get_protocol

        rendered = [get_protocol(protocol).render(text, len(imgs), self) for text, imgs in zip(texts, images)]
        return [r.text for r in rendered], any(r.add_bos for r in rendered)

    @torch.no_grad()
    @collector_paused()
    def generate(
        self, texts: list[str], images: list[list], prune_replay=None, protocol: str | None = None, **gen_kwargs
    ) -> list[Generation]:
        """Answer each ``texts[i]`` about ``images[i]`` (a list of PIL images, possibly empty).

        ``texts`` are questions put in the checkpoint's chat template or, with ``protocol``, benchmark
        contexts rendered by that evaluation protocol, which also adds its token-id kwargs (``render``).
        ``prune_replay`` (LLM-stage compressors, for verification): the ``records`` of an earlier
        call's ``last_plan``; every prefill then prunes the prompt exactly as that call did.
        Python's garbage collector is paused during the call, so no collection lands in a timed
        stage; the first call's samples are marked ``warmup`` (records leave them out of timings).
        """
        reset_peak_memory(self.device)
        images = [[to_rgb(image) for image in group] for group in images]
        prompts, add_bos = self.render(texts, images, protocol)
        if protocol is not None:
            from gc2bench.prompting import get_protocol

            gen_kwargs = get_protocol(protocol).bind(gen_kwargs, self.tokenizer)
        inputs = self.model_inputs(prompts, images, add_bos=add_bos)
        input_ids = inputs["input_ids"].to(self.device)
        attention_mask = inputs["attention_mask"].to(self.device)
        stats = [SampleStats() for _ in texts]
        extra = {}
        self.last_selection, self.last_crop_budgets = [], None
        if any(images):
            input_ids, attention_mask, image_features = self._compress(inputs, images, stats)
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            extra["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=image_features)}
        self._check_context(attention_mask)
        self._prefill_timer.reset()
        if self.pruner is not None:
            self.last_plan = self._pruning_plan(input_ids, attention_mask, images, prune_replay)
            self.pruner.begin(self.last_plan)
        want_scores = bool(gen_kwargs.get("output_scores"))
        if want_scores:
            gen_kwargs["return_dict_in_generate"] = True
        try:
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **extra, **gen_kwargs)
        finally:
            if self.pruner is not None:
                self.pruner.begin(None)
        scores = torch.stack(output.scores, dim=1) if want_scores else None
        output = output.sequences if want_scores else output
        new_tokens = output[:, input_ids.shape[1] :]
        answers = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        pad = gen_kwargs.get("pad_token_id", self.model.generation_config.pad_token_id)
        peak_mb, warmup = peak_memory_mb(self.device), self.batches_answered == 0
        self.batches_answered += 1
        for row, stat in enumerate(stats):
            stat.peak_memory_mb, stat.warmup = peak_mb, warmup
            stat.prefill_ms = 1e3 * self._prefill_timer.prefill_s / len(texts)
            stat.decode_ms = 1e3 * self._prefill_timer.decode_s / len(texts)
            stat.new_tokens = int((new_tokens[row] != pad).sum()) if pad is not None else new_tokens.shape[1]
            if self.pruner is not None and self.last_plan.image_tokens_per_layer is not None:
                per_layer = self.last_plan.image_tokens_per_layer[:, row].tolist()
                stat.image_tokens_per_layer = per_layer
                stat.layer_averaged_image_tokens = sum(per_layer) / len(per_layer)
            self._equivalent_tokens(stat, row)
            stat.llm_input_tokens = int(attention_mask[row].sum())
            cost = sample_tflops(
                self.config,
                stat.visual_tokens_kept,
                stat.llm_input_tokens - stat.visual_tokens_kept,
                stat.image_tokens_per_layer,
            )
            stat.analytic_tflops, stat.kv_cache_mb = cost["tflops"], cost["kv_cache_mb"]
        return [
            Generation(
                answer.strip(),
                stat,
                new_tokens[row].tolist(),
                None if scores is None else scores[row],
                raw_text=answer,
                prompt=prompt,
            )
            for row, (answer, stat, prompt) in enumerate(zip(answers, stats, prompts))
        ]

    def _check_context(self, attention_mask: torch.Tensor) -> None:
        """A prompt (after compression) as long as the LLM's context fails, naming both lengths."""
        context = getattr(self.config.get_text_config(), "max_position_embeddings", None)
        longest = int(attention_mask.sum(dim=1).max()) if context else 0
        if context and longest >= context:
            raise ValueError(f"the prompt is {longest} tokens, longer than the model's context of {context} positions")

    def _equivalent_tokens(self, stat: SampleStats, row: int) -> None:
        """``stat``'s layer-averaged image and newline tokens (EQUIVALENT_CONVENTION) for batch row ``row``."""
        if stat.image_tokens_per_layer is None:
            stat.equivalent_image_tokens = float(stat.visual_tokens_kept)
            stat.equivalent_newline_tokens = float(stat.newline_tokens_kept)
            return
        from gc2bench.compressors.base import SEGMENT_NEWLINE

        per_layer = stat.image_tokens_per_layer
        stat.equivalent_image_tokens = sum(per_layer) / len(per_layer)
        stages, kept = self.pruner.stages, self.last_plan.kept_segments
        if len(kept) != len(stages):  # a replayed or unusual plan: newlines per layer unknown
            return
        newlines = [stat.newline_tokens_kept] * len(per_layer)
        for stage, segments in sorted(zip(stages, kept), key=lambda pair: pair[0].prune_layer):
            count = int((segments[row] == SEGMENT_NEWLINE).sum())
            newlines[stage.prune_layer :] = [count] * (len(per_layer) - stage.prune_layer)
        stat.equivalent_newline_tokens = sum(newlines) / len(newlines)

    def _compress(self, inputs, images: list[list], stats: list[SampleStats]):
        """Kept features per image and the prompts with each image's token run shrunk to match."""
        self.check_compressor(self.compressor, self.name)
        layouts = self.layouts(inputs)
        pixel_values = inputs["pixel_values"]
        flat_pixels = torch.cat([pv[: layout.num_views] for pv, layout in zip(pixel_values, layouts)])
        flat_pixels = flat_pixels.to(self.device, self.model.dtype)

        start = now(self.device)
        request = self.compressor.score_request
        view_counts = [layout.num_views for layout in layouts]
        if request.merge_inputs:
            features, scores, keys, projector_inputs = self.encode_views_for_merging(flat_pixels, request, layouts)
            merge_inputs = {
                "merge_inputs": MergeInputs(list(keys.split(view_counts)), list(projector_inputs.split(view_counts)))
            }
        else:
            features, scores = self.encode_views(flat_pixels, request)
            merge_inputs = {}
        vision_done = now(self.device)
        per_image_features = features.split(view_counts) if features is not None else None
        per_image_scores = scores.split(view_counts) if scores is not None else [None] * len(layouts)
        selection = self.compressor.select(list(per_image_scores), layouts, **merge_inputs)
        kept_sources = [sources.to(self.device) for sources in selection.per_image()]
        if request.merge_inputs:
            if selection.replacement_features is None:
                raise RuntimeError(
                    f"{type(self.compressor).__name__} asked for merge inputs but returned no replacement_features"
                )
            kept_features = [self.pack_replaced(s, r) for s, r in zip(kept_sources, selection.replacement_features)]
        else:
            kept_features = [self.pack(f, s, layout) for f, s, layout in zip(per_image_features, kept_sources, layouts)]
        compress_done = now(self.device)
        self.last_selection = [(layout, sources.cpu()) for layout, sources in zip(layouts, kept_sources)]
        self.last_crop_budgets = selection.crop_budgets

        image_owner = [row for row, imgs in enumerate(images) for _ in imgs]
        budgets = selection.crop_budgets.tolist() if selection.crop_budgets is not None else None
        convention = self.compressor.convention
        for index, (layout, sources) in enumerate(zip(layouts, kept_sources)):
            stat = stats[image_owner[index]]
            stat.ratio_convention = convention
            is_newline = sources == NEWLINE
            stat.visual_tokens_before += len(layout.packed_sources)
            stat.newline_tokens_before += int((layout.packed_sources == NEWLINE).sum())
            stat.visual_tokens_kept += len(sources)
            stat.newline_tokens_kept += int(is_newline.sum())
            views = source_views(sources[~is_newline].cpu(), layout.tokens_per_view)
            stat.kept_per_view.append(torch.bincount(views, minlength=layout.num_views).tolist())
            if budgets is not None:
                stat.crop_budgets = (stat.crop_budgets or []) + [[b for b in budgets[index] if b == b]]
        share = 1e3 / len(stats)
        for stat in stats:
            stat.vision_ms = (vision_done - start) * share
            stat.compression_ms = (compress_done - vision_done) * share

        before = [self.processor_token_count(layout) for layout in layouts]
        after = [len(s) for s in kept_sources]
        input_ids, attention_mask = self._resize_image_runs(
            inputs["input_ids"], inputs["attention_mask"], before, after
        )
        return input_ids.to(self.device), attention_mask.to(self.device), kept_features

    def _pruning_plan(self, input_ids, attention_mask, images: list[list], replay):
        """What the decoder pruner needs about this batch: image positions, segments, crop budgets."""
        from gc2bench.compressors.base import SEGMENT_NEWLINE, SEGMENT_TEXT
        from gc2bench.models.decoder_pruning import PrefillPlan

        valid = attention_mask.bool()
        image = (input_ids == self.image_token_id) & valid
        segment = torch.full_like(input_ids, SEGMENT_TEXT)
        if self.last_selection:
            segment[image] = torch.cat(
                [
                    torch.where(s == NEWLINE, SEGMENT_NEWLINE, s // layout.tokens_per_view)
                    for layout, s in self.last_selection
                ]
            ).to(segment.device)
        budgets = None
        if self.last_crop_budgets is not None:
            crops = self.last_crop_budgets.to(self.device, torch.float64)
            first_image = [sum(len(g) for g in images[:row]) if images[row] else -1 for row in range(len(images))]
            ratio = float(self.compressor.ratio)
            budgets = torch.full(
                (len(images), 1 + crops.shape[1]), float("nan"), dtype=torch.float64, device=self.device
            )
            for row, index in enumerate(first_image):
                if index >= 0:
                    budgets[row, 0] = ratio
                    budgets[row, 1:] = crops[index]
        return PrefillPlan(image=image, valid=valid, segment=segment, segment_budgets=budgets, replay=replay)

    def _resize_image_runs(self, input_ids, attention_mask, before: list[int], after: list[int]):
        """Re-size image k's run of placeholders from ``before[k]`` to ``after[k]`` tokens.

        Images are numbered in reading order over the batch; ``after`` may exceed ``before``
        (the GlobalCom² authors' padded-row newlines). The result is left-padded again.
        """
        is_image = (input_ids == self.image_token_id) & attention_mask.bool()
        before_t, after_t = torch.tensor(before), torch.tensor(after)
        image_index = torch.repeat_interleave(torch.arange(len(before)), before_t)
        rank = torch.arange(int(before_t.sum())) - torch.repeat_interleave(before_t.cumsum(0) - before_t, before_t)
        copies = (rank < after_t[image_index]).long()
        last = rank == before_t[image_index] - 1
        copies[last] += (after_t - before_t).clamp(min=0)[image_index[last]]
        repeats = attention_mask.long().clone()
        repeats[is_image] = copies
        lengths = repeats.sum(1)
        width = int(lengths.max())
        rows = torch.arange(input_ids.shape[0])
        row_of = torch.repeat_interleave(rows, lengths)
        tokens = torch.repeat_interleave(input_ids.flatten(), repeats.flatten())
        # Left padding: row r's tokens occupy its last lengths[r] columns.
        column = torch.arange(len(tokens)) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
        column += (width - lengths)[row_of]
        new_ids = torch.full((input_ids.shape[0], width), self.tokenizer.pad_token_id, dtype=input_ids.dtype)
        new_mask = torch.zeros((input_ids.shape[0], width), dtype=attention_mask.dtype)
        new_ids[row_of, column] = tokens
        new_mask[row_of, column] = 1
        return new_ids, new_mask
