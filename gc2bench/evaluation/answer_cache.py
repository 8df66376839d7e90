"""The run directory's answer cache: each answer, with its per-sample stats, appended (and fsynced) to
``.answers*.jsonl`` as soon as it is generated, and the adapter wrapper that serves cached answers, so
a task killed half-way resumes where it stopped."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from gc2bench.errors import Gc2benchError


class CacheWriteError(Gc2benchError, OSError):
    """The answer cache could not be written (a full disk, a read-only directory): the run stops."""


class AnswerCache:
    """Answers with their per-sample stats, appended (and fsynced) to a JSONL file as they are made.

    Reads every ``.answers*.jsonl`` of the run directory (one file per data-parallel rank); a
    line cut short by a kill is ignored.
    """

    def __init__(self, directory: str | Path, rank: int = 0, world_size: int = 1):
        directory = Path(directory)
        self.path = directory / (".answers.jsonl" if world_size == 1 else f".answers.rank{rank}.jsonl")
        self.entries: dict[str, dict] = {}
        for path in sorted(directory.glob(".answers*.jsonl")):
            unreadable = 0
            try:
                lines = path.read_bytes().split(b"\n")
            except OSError as error:
                print(
                    f"warning: answer cache {path} cannot be read ({error.strerror}); its answers are made again",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            for line in filter(None, lines):
                try:
                    entry = json.loads(line.decode("utf-8"))
                    self.entries[entry["key"]] = entry
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    unreadable += 1
            if unreadable:
                print(
                    f"warning: answer cache {path}: {unreadable} unreadable line(s) skipped (cut short by a kill, "
                    f"or not written by gc2bench); their answers are made again",
                    file=sys.stderr,
                    flush=True,
                )
        self.loaded = len(self.entries)
        self.hits = 0

    def get(self, key: str) -> dict | None:
        entry = self.entries.get(key)
        self.hits += entry is not None
        return entry

    def put(self, key: str, entry: dict) -> None:
        try:
            self._append(key, entry)
        except OSError as error:  # not a sample's failure: the run cannot keep what it computes
            raise CacheWriteError(error.errno, f"{error.strerror} (the answer cache)", str(self.path)) from error

    def _append(self, key: str, entry: dict) -> None:
        entry = {"key": key, **entry}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as file:
            file.seek(0, os.SEEK_END)
            if file.tell():  # a line cut short by a kill is left alone: this one starts on a line of its own
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    file.write(b"\n")
            file.write((json.dumps(entry, default=str) + "\n").encode())
            file.flush()
            os.fsync(file.fileno())
        self.entries[key] = entry

    @staticmethod
    def clear(directory: str | Path) -> None:
        for path in Path(directory).glob(".answers*.jsonl"):
            path.unlink()


def image_digest(image) -> str:
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:16]


class CachingAdapter:
    """A model adapter whose deterministic answers go through an ``AnswerCache``.

    The key of a sample is its prompt text, its images' pixels, the generation kwargs and
    ``scope`` (model and compressor parameters), so a changed prompt, image or setting is a miss.
    Everything else is the wrapped adapter's.
    """

    def __init__(self, adapter, cache: AnswerCache, scope: dict):
        self.adapter = adapter
        self.cache = cache
        self.scope = json.dumps(scope, sort_keys=True, default=str)

    def __getattr__(self, name):
        if name == "adapter":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.adapter, name)

    def sample_key(self, text: str, images: list, gen_kwargs: dict) -> str:
        payload = json.dumps(
            [self.scope, text, [image_digest(image) for image in images], sorted(gen_kwargs.items())], default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def generate(self, texts: list[str], images: list[list], prune_replay=None, **gen_kwargs):
        if prune_replay is not None or gen_kwargs.get("do_sample") or gen_kwargs.get("output_scores"):
            return self.adapter.generate(texts, images, prune_replay=prune_replay, **gen_kwargs)
        from gc2bench.models.adapter import Generation, SampleStats

        keys = [self.sample_key(text, imgs, gen_kwargs) for text, imgs in zip(texts, images)]
        results = [self.cache.get(key) for key in keys]
        results = [
            None
            if entry is None
            else Generation(
                entry["text"],
                SampleStats(**entry["stats"]),
                entry.get("token_ids", []),
                raw_text=entry.get("raw_text"),
                prompt=entry.get("prompt"),
            )
            for entry in results
        ]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            made = self.adapter.generate([texts[i] for i in missing], [images[i] for i in missing], **gen_kwargs)
            for i, generation in zip(missing, made):
                self.cache.put(
                    keys[i],
                    {
                        "text": generation.text,
                        "raw_text": generation.raw_text,
                        "prompt": generation.prompt,
                        "stats": dataclasses.asdict(generation.stats),
                        "token_ids": list(generation.token_ids),
                    },
                )
                results[i] = generation
        return results
