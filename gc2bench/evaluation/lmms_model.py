"""gc2bench as an lmms-eval model: lmms-eval drives the tasks, a model adapter answers.

``GC2BenchLMM`` receives lmms-eval's ``generate_until`` requests, batches them, asks the
adapter (which applies the compressor) for answers, and keeps per-sample token accounting
and timings in ``sample_stats`` for the run record. A sample that raises is recorded in
``failures`` and answered with an empty string so the rest of the task proceeds; the run
record reports how many failed, so it is never silently scored as a wrong answer.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback

from lmms_eval.api.model import lmms
from tqdm import tqdm

IMAGE_PLACEHOLDER = "<image>"


class GC2BenchLMM(lmms):
    is_simple = True

    def __init__(self, adapter, batch_size: int = 1, **_ignored):
        super().__init__()
        self.adapter = adapter
        self.batch_size = int(batch_size)
        self.sample_stats: dict[tuple[str, int], dict] = {}
        self.failures: list[dict] = []

    def __str__(self) -> str:  # lmms-eval's response cache is keyed on str(model)
        compressor = self.adapter.compressor
        return f"gc2bench({self.adapter.name}, {compressor.name}, {sorted(compressor.params().items())})"

    def loglikelihood(self, requests):
        raise NotImplementedError("gc2bench evaluates generation tasks only (output_type: generate_until)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("gc2bench evaluates single-round generation tasks only")

    def generate_until(self, requests) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (str(requests[i].args[1]), i))
        progress = tqdm(total=len(requests), desc="gc2bench generate", disable=self.rank != 0)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            kwargs = dict(requests[batch[0]].args[1])
            same_kwargs = [i for i in batch if dict(requests[i].args[1]) == kwargs]
            for chunk in (same_kwargs, [i for i in batch if i not in same_kwargs]):
                if chunk:
                    self._answer(requests, chunk, answers)
            progress.update(len(batch))
        progress.close()
        return [a if a is not None else "" for a in answers]

    def _answer(self, requests, indices: list[int], answers: list) -> None:
        texts, images, keys = [], [], []
        try:
            for i in indices:
                context, _gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                keys.append((task, doc_id))
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
                texts.append(context.replace(IMAGE_PLACEHOLDER, "").strip())
                images.append(list(visuals))
            gen_kwargs, until = to_generate_kwargs(requests[indices[0]].args[1])
            results = self.adapter.generate(texts, images, **gen_kwargs)
        except Exception as error:
            if len(indices) > 1:  # isolate the failing sample
                for i in indices:
                    self._answer(requests, [i], answers)
                return
            task, doc_id = requests[indices[0]].args[4], requests[indices[0]].args[3]
            self.failures.append({"task": task, "doc_id": doc_id, "error": f"{type(error).__name__}: {error}",
                                  "traceback": traceback.format_exc(limit=3)})
            print(f"gc2bench: {task} doc {doc_id} failed and is skipped: {type(error).__name__}: {error}",
                  file=sys.stderr)
            return
        for i, key, result in zip(indices, keys, results):
            answers[i] = cut_at_stop_strings(result.text, until)
            self.sample_stats[key] = dataclasses.asdict(result.stats)


def to_generate_kwargs(task_kwargs: dict) -> tuple[dict, list[str]]:
    """lmms-eval generation kwargs → transformers ``generate`` kwargs and stop strings."""
    task_kwargs = dict(task_kwargs)
    until = task_kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(task_kwargs.pop("temperature", 0) or 0)
    do_sample = bool(task_kwargs.pop("do_sample", False)) and temperature > 0
    kwargs = {"max_new_tokens": int(task_kwargs.pop("max_new_tokens", 128)), "do_sample": do_sample,
              "num_beams": int(task_kwargs.pop("num_beams", 1) or 1)}
    if do_sample:
        kwargs["temperature"] = temperature
        kwargs["top_p"] = float(task_kwargs.pop("top_p", 1.0) or 1.0)
    return kwargs, until


def cut_at_stop_strings(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
