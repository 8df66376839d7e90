"""gc2bench as an lmms-eval model: lmms-eval drives the tasks, a model adapter answers.

``GC2BenchLMM`` receives lmms-eval's ``generate_until`` requests, batches them, asks the
adapter (which applies the compressor) for answers, and keeps per-sample token accounting
and timings in ``sample_stats`` for the run record. A sample that raises is recorded in
``failures`` and answered with an empty string so the rest of the task proceeds; the run
record reports how many failed, so it is never silently scored as a wrong answer.

``GC2BenchModel`` is the same class as an lmms-eval plugin (entry point ``lmms_eval.models`` →
``gc2bench``): ``python -m lmms_eval --model gc2bench --model_args compressor=globalcom2,ratio=0.1``
composes gc2bench's run config (conf/config.yaml) with the model_args as Hydra overrides,
validates it and builds the compressor and model adapter as ``run.py`` does.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback

from lmms_eval.api.model import lmms
from tqdm import tqdm

from gc2bench.evaluation.answer_cache import CacheWriteError
from gc2bench.evaluation.images import decode_images, strict_decoding
from gc2bench.evaluation.progress import progress_stream
from gc2bench.prompting import get_protocol, prompting_record


class GC2BenchLMM(lmms):
    is_simple = True

    def __init__(self, adapter, batch_size: int = 1, protocol: str | None = None, **_ignored):
        super().__init__()
        self.adapter = adapter
        self.batch_size = int(batch_size)
        self.protocol = get_protocol(protocol)
        self.sample_stats: dict[tuple[str, int], dict] = {}
        self.failures: list[dict] = []
        self.prompting: dict[str, dict] = {}  # per task: protocol, template, generate kwargs (for the record)

    def __str__(self) -> str:  # lmms-eval's response cache is keyed on str(model)
        compressor = self.adapter.compressor
        return (
            f"gc2bench({self.adapter.name}, {compressor.name}, {sorted(compressor.params().items())}, "
            f"protocol={self.protocol.name})"
        )

    def clean(self) -> None:
        """Called by lmms-eval after each evaluation. The adapter stays loaded for the run's next task,
        so only the CUDA cache is released (lmms-eval's default also runs two full ``gc.collect``)."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loglikelihood(self, requests):
        raise NotImplementedError("gc2bench evaluates generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("gc2bench evaluates single-round generation tasks only")

    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (str(requests[i].args[1]), i))
        progress = tqdm(
            total=len(requests),
            desc="gc2bench generate",
            disable=self.rank != 0,
            file=progress_stream(),
            dynamic_ncols=True,
        )
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            kwargs = dict(requests[batch[0]].args[1])
            same_kwargs = [i for i in batch if dict(requests[i].args[1]) == kwargs]
            for chunk in (same_kwargs, [i for i in batch if i not in same_kwargs]):
                if chunk:
                    self._answer(requests, chunk, answers)
            progress.update(len(batch))
        progress.close()
        self._gather_to_rank0()
        return [a if a is not None else "" for a in answers]

    @property
    def device(self):
        """The adapter's device (lmms-eval's torchrun path allocates its collectives' tensors here)."""
        return self.adapter.device

    def _gather_to_rank0(self) -> None:
        """Data parallel (torchrun): rank 0 collects every rank's ``sample_stats`` and ``failures``,
        so the record it writes covers all documents; other ranks keep their own."""
        import torch.distributed as dist

        if self.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object((self.sample_stats, self.failures), gathered, dst=0)
        if self.rank == 0:
            for rank, (stats, failures) in enumerate(gathered):
                if rank == 0:
                    continue
                self.sample_stats.update(stats)
                self.failures.extend(f for f in failures if f not in self.failures)

    def _answer(self, requests, indices: list[int], answers: list) -> None:
        texts, images, keys = [], [], []
        try:
            for i in indices:
                context, _gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                keys.append((task, doc_id))
                with strict_decoding():
                    doc = decode_images(self.task_dict[task][split][doc_id])
                visuals = doc_to_visual(doc) or []
                texts.append(context)
                images.append(list(visuals))
            gen_kwargs, until = self.protocol.generate_kwargs(task, requests[indices[0]].args[1])
            results = self.adapter.generate(texts, images, protocol=self.protocol.name, **gen_kwargs)
        except CacheWriteError:
            raise
        except Exception as error:
            if len(indices) > 1:  # isolate the failing sample
                for i in indices:
                    self._answer(requests, [i], answers)
                return
            task, doc_id = requests[indices[0]].args[4], requests[indices[0]].args[3]
            self.failures.append(
                {
                    "task": task,
                    "doc_id": doc_id,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(limit=3),
                }
            )
            print(
                f"gc2bench: {task} doc {doc_id} failed and is skipped: {type(error).__name__}: {error}", file=sys.stderr
            )
            return
        self._note_prompting(keys[0][0], texts[0], len(images[0]), gen_kwargs)
        for i, key, result in zip(indices, keys, results):
            answers[i] = self.protocol.postprocess(decoded(result), until)
            self.sample_stats[key] = dataclasses.asdict(result.stats)

    def _note_prompting(self, task: str, context: str, num_images: int, gen_kwargs: dict) -> None:
        """Once per task: what the record states about prompting (``prompting_record``)."""
        if task in self.prompting:
            return
        try:
            self.prompting[task] = prompting_record(self.protocol, task, self.adapter, context, num_images, gen_kwargs)
        except AttributeError:  # an adapter stand-in without tokenizer or config
            self.prompting[task] = {**self.protocol.describe(task), "generate_kwargs": dict(gen_kwargs)}


def decoded(result) -> str:
    """The answer as decoded, before any strip (``text`` when a stand-in replaced it)."""
    raw = result.raw_text
    return raw if raw is not None and raw.strip() == result.text else result.text


class GC2BenchModel(GC2BenchLMM):
    """``--model gc2bench`` for lmms-eval: each model_arg is a Hydra override of gc2bench's run config.

    ``model_args="compressor=globalcom2,ratio=0.1,model=tiny"`` builds what ``python run.py
    compressor=globalcom2 ratio=0.1 model=tiny`` would (the suite part of the config is unused:
    lmms-eval picks the tasks). lmms-eval's ``--batch_size`` (an integer) sets the batch size,
    else the suite's; ``--device`` sets ``model.device`` unless an override does;
    ``max_batch_size`` is accepted and unused.
    """

    def __init__(
        self,
        overrides: list[str] | tuple[str, ...] = (),
        batch_size=None,
        device: str | None = None,
        max_batch_size=None,
        **model_args,
    ):
        from gc2bench.config import build_compressor, build_model

        overrides = list(overrides) + [f"{key}={value}" for key, value in model_args.items()]
        exit_nonzero_on_evaluation_error()
        self.run_config = compose_run_config(overrides, device=device)
        compressor = build_compressor(self.run_config)
        super().__init__(
            build_model(self.run_config, compressor),
            batch_size=_batch_size(batch_size, self.run_config),
            protocol=self.run_config.suite.get("protocol"),
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GC2BenchModel:
        """``key=value,…`` → Hydra overrides, kept as written (lmms-eval's parser would retype values)."""
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(overrides=split_model_args(arg_string), **extra)


_EVALUATION_ERRORS: list | None = None


def exit_nonzero_on_evaluation_error() -> None:
    """lmms-eval's CLI logs an evaluation's exception ("Error during evaluation") and exits 0; with
    ``--model gc2bench`` the process then exits 1 (at exit, after lmms-eval has written what it writes)."""
    global _EVALUATION_ERRORS
    if _EVALUATION_ERRORS is not None:
        return
    import atexit
    import os

    from loguru import logger

    _EVALUATION_ERRORS = []
    logger.add(
        _EVALUATION_ERRORS.append,
        level="ERROR",
        format="{message}",
        filter=lambda record: "Error during evaluation" in record["message"],
    )

    def exit_nonzero():
        if _EVALUATION_ERRORS:
            print(
                f"gc2bench: lmms-eval reported {len(_EVALUATION_ERRORS)} failed evaluation(s) (above); exit status 1",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(1)

    atexit.register(exit_nonzero)


def compose_run_config(overrides: list[str], device: str | None = None):
    """The run config of ``model_args`` overrides, validated (ConfigError on bad values), on lmms-eval's ``device``."""
    from omegaconf import open_dict

    from gc2bench import config
    from gc2bench.config import ConfigError, validate
    from gc2bench.evaluation.suite import check_suite

    try:
        cfg = config.compose_run_config(overrides, check=False)
    except ConfigError as error:
        raise ConfigError(f"gc2bench model_args {','.join(overrides)}: {error}") from None
    if device and "device" in cfg.model and not any(o.startswith("model.device=") for o in overrides):
        with open_dict(cfg):
            cfg.model.device = device
    validate(cfg)
    check_suite(cfg)
    return cfg


def split_model_args(arg_string: str) -> list[str]:
    """Split ``a=1,b=[2,3],c='x,y'`` at the commas outside brackets and quotes; each part needs ``=``."""
    from gc2bench.config import ConfigError

    parts, current, depth, quote = [], "", 0, None
    for char in arg_string.strip():
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    parts = [part for part in parts if part]
    bad = [part for part in parts if "=" not in part]
    if bad:
        raise ConfigError(
            f"gc2bench model_args: {bad[0]!r} is not key=value (model_args are Hydra overrides, "
            f"e.g. compressor=globalcom2,ratio=0.1,model=tiny)"
        )
    return parts


def _batch_size(value, cfg) -> int:
    from gc2bench.config import ConfigError

    if value is None:
        return int(cfg.suite.batch_size)
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"gc2bench: batch_size={value!r} must be a positive integer (automatic batch sizes are not supported)"
        ) from None
    if size < 1:
        raise ConfigError(f"gc2bench: batch_size={value!r} must be a positive integer")
    return size


def lmms_eval_manifest():
    """The ``lmms_eval.models`` entry point: registers ``--model gc2bench``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="gc2bench", simple_class_path="gc2bench.evaluation.lmms_model.GC2BenchModel")
