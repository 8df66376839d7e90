"""`gc2bench bench selection FILE`: CPU time per image of GlobalCom² selection + packing.

Times what the authors' ``compress_thumbnail`` + ``generate_scale_for_crop_features`` +
``compress_crops`` do together: from per-view features [V, N, D] (random, float32) and the
file's per-view scores to the packed compressed sequence [M, D] with newline tokens, in the
default (reference) mode, layout construction included.

Two figures per case: ``uncached`` rebuilds the host-side geometry on every call (an image
size not seen before: the figure reported last), ``cached`` reuses it (a size seen before).
Each is the median over ``repeats`` calls after ``warmup`` untimed calls.
"""

from __future__ import annotations

import platform
import statistics
import time
from functools import partial

import torch

from gc2bench.compressors.conformance import case_compressor, case_layout, load_vectors
from gc2bench.compressors.globalcom2 import clear_geometry_cache
from gc2bench.errors import ConfigError


def _compress_one(data, case, compressor, features, newline, scores) -> tuple:
    """One image: layout, selection and packing; returns the packed shape (M, D)."""
    packed, _ = compressor.compress([features], newline, [scores], [case_layout(data, case)])
    return tuple(packed[0].shape)


def _median_ms(run, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_selection(file: str, dim: int = 4096, repeats: int = 20, warmup: int = 3) -> int:
    """Print one line per case, then ``median X ms/image`` (uncached geometry) last; returns 0."""
    data = load_vectors(file)
    if dim < 1 or repeats < 1 or warmup < 1:
        raise ConfigError(f"bench selection: --dim ({dim}), --repeats ({repeats}) and warmup ({warmup}) must be >= 1")
    generator = torch.Generator().manual_seed(0)
    print(
        f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"D={dim}, float32 features, {repeats} repeats per case"
    )
    uncached, cached = [], []
    with torch.inference_mode():
        for case in data["cases"]:
            layout = case_layout(data, case)
            compressor = case_compressor(data, case)
            scores = torch.tensor(case["scores"], dtype=torch.float32)
            features = torch.randn(layout.num_views, layout.tokens_per_view, dim, generator=generator)
            newline = torch.randn(dim, generator=generator)
            run = partial(_compress_one, data, case, compressor, features, newline, scores)
            for _ in range(warmup):
                shape = run()
            cached.append(_median_ms(run, repeats))
            uncached.append(_median_ms(run, repeats, before=clear_geometry_cache))
            height, width = layout.image_size
            print(
                f"{case.get('name', '?')}: {width}x{height}, {layout.num_views} views, R={compressor.ratio}, "
                f"packed {list(shape)}: {uncached[-1]:.3f} ms uncached, {cached[-1]:.3f} ms cached"
            )
    print(f"cached geometry: median {statistics.median(cached):.3f} ms/image")
    print(f"median {statistics.median(uncached):.3f} ms/image")
    return 0
