import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# One torch (OpenMP) thread in the test process and the runs it starts: the tiny models' ops gain nothing
# from intra-op threads, and on a busy 2-core machine OpenMP's waiting workers made tests 7-10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # optional: only the drift checks read it
DATA = REPO / "tests" / "data"
# (height, width) of images at the edges of AnyRes: one-pixel strips, extreme and near-square aspect ratios.
ODD_IMAGE_SIZES = (
    (1, 1), (1, 4000), (4000, 1), (1, 2), (2, 1), (7, 3), (3, 7),
    (1001, 999), (999, 1001), (333, 777), (777, 333), (480, 640), (640, 480), (1080, 1920),
)  # fmt: skip


def paper_table(name: str) -> Path:
    """The repo's one copy of ``../shared/paper_tables/<name>``: an experiment folder's, else tests/data's."""
    copies = [*REPO.glob(f"experiments/*/{name}"), *DATA.glob(name)]
    if len(copies) != 1:
        raise FileNotFoundError(f"expected one copy of {name} under experiments/*/ or tests/data/, found {copies}")
    return copies[0]


def compact_markdown(text: str) -> str:
    """``text`` with each markdown table line's cell padding removed (``| a |  | b |``), so a test names
    the cells, not the column widths pandas / tabulate chose."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|") and line.endswith("|"):
            cells = re.split(r"(?<!\\)\|", line[1:-1])
            line = "| " + " | ".join(cell.strip() for cell in cells) + " |"
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One gc2bench cache (tiny model, fixtures) for the whole test session."""
    path = tmp_path_factory.mktemp("gc2bench-cache")
    os.environ["GC2BENCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_path(cache_dir):
    from gc2bench.models.tiny import tiny_llava_next_path

    return tiny_llava_next_path(seed=0, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_path):
    from gc2bench.compressors.none import NoCompression
    from gc2bench.models.llava_next import LlavaNextAdapter

    return LlavaNextAdapter(str(tiny_path), NoCompression(), name="tiny", dtype="float32", device="cpu")
