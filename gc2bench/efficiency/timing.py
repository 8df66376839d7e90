"""Wall-clock timing that is honest on GPU: CUDA work is synchronised before each reading."""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import torch


def now(device: torch.device | str | None = None) -> float:
    """Seconds from a monotonic clock, after the device's queued work has finished."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PrefillTimer:
    """Times the first forward call of a module (the prefill) apart from the later ones (decode).

    Attach to the LLM's decoder with ``attach(module)``; ``reset()`` before each ``generate``.
    """

    def __init__(self, device: torch.device | str):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self._start = 0.0

    def attach(self, module: torch.nn.Module) -> PrefillTimer:
        """Hook ``module`` for as long as it lives (the adapter's LLM decoder)."""
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)
        return self

    def _before(self, module, args):
        self._start = now(self.device)

    def _after(self, module, args, output):
        elapsed = now(self.device) - self._start
        if self.calls == 0:
            self.prefill_s += elapsed
        else:
            self.decode_s += elapsed
        self.calls += 1


@contextmanager
def collector_paused(collect_first: bool = False):
    """Python's cyclic garbage collector off inside the block (usable as a decorator too).

    A full collection with transformers, torch and Hydra loaded takes 0.1–0.5 s and would otherwise
    land inside a timed forward now and then. ``collect_first`` collects on entry (benchmarks; a run
    lets collections happen between its batches instead).
    """
    if collect_first:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak CUDA memory allocated on ``device`` since the last ``reset_peak_memory(device)``, 10^6 bytes;
    None on CPU (no per-call figure: a process's peak RSS never goes down)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1e6


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
