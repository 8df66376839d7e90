"""Wall-clock timing that is honest on GPU: CUDA work is synchronised before each reading."""

from __future__ import annotations

import time

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
        self._handles = []
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0
        self._start = 0.0

    def attach(self, module: torch.nn.Module) -> "PrefillTimer":
        self._handles.append(module.register_forward_pre_hook(self._before))
        self._handles.append(module.register_forward_hook(self._after))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _before(self, module, args):
        self._start = now(self.device)

    def _after(self, module, args, output):
        elapsed = now(self.device) - self._start
        if self.calls == 0:
            self.prefill_s += elapsed
        else:
            self.decode_s += elapsed
        self.calls += 1
