"""Small local datasets in the schemas of real lmms-eval tasks, built deterministically.

Each fixture is a parquet file whose columns are those of the task's hub dataset, so
lmms-eval's own task definition (prompt, filters, metric) runs on it unchanged through a
dict override ``{"task": <name>, "dataset_path": "parquet", "dataset_kwargs": {...}}``.
Images are drawn here (coloured shapes, a few kilobytes each) at sizes that exercise
different AnyRes grids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

FIXTURE_VERSION = 1
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
# (width, height): square, wide, tall, tiny, large.
SIZES = [(120, 80), (200, 60), (64, 160), (40, 40), (300, 300)]


def draw_image(index: int, size: tuple[int, int], color: str, shape: str) -> Image.Image:
    """A grey canvas with one filled shape; deterministic in its arguments."""
    width, height = size
    image = Image.new("RGB", size, (110 + 10 * (index % 5), 110, 110))
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image


def _pope_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, asked, category) in enumerate([
        (SIZES[0], "red", "circle", "circle", "adversarial"),
        (SIZES[1], "blue", "square", "circle", "popular"),
        (SIZES[2], "green", "square", "square", "random"),
        (SIZES[3], "red", "square", "circle", "adversarial"),
        (SIZES[4], "blue", "circle", "circle", "random"),
    ]):
        rows.append({
            "id": str(i), "question_id": str(i),
            "question": f"Is there a {asked} in the image?",
            "answer": "yes" if asked == shape else "no",
            "image_source": f"gc2bench_fixture_{i}", "category": category,
            "image": draw_image(i, size, color, shape),
        })
    return rows


def _vqav2_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, question, answer, answer_type) in enumerate([
        (SIZES[0], "red", "circle", "What color is the circle?", "red", "other"),
        (SIZES[1], "blue", "square", "Is there a square?", "yes", "yes/no"),
        (SIZES[2], "green", "circle", "How many circles are there?", "1", "number"),
        (SIZES[4], "blue", "square", "Is the square red?", "no", "yes/no"),
    ]):
        answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        rows.append({
            "question_type": question.split(" ")[0].lower(), "multiple_choice_answer": answer,
            "answers": answers, "image_id": 1000 + i, "answer_type": answer_type,
            "question_id": 5000 + i, "question": question,
            "image": draw_image(i, size, color, shape),
        })
    return rows


FIXTURES = {
    # fixture name: (rows builder, split the task reads)
    "pope": (_pope_rows, "test"),
    "vqav2": (_vqav2_rows, "validation"),
}


def default_fixture_dir() -> Path:
    root = Path(os.environ.get("GC2BENCH_CACHE", Path.home() / ".cache" / "gc2bench"))
    return root / f"fixtures-v{FIXTURE_VERSION}"


def fixture_split(name: str) -> str:
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; available: {sorted(FIXTURES)}")
    return FIXTURES[name][1]


def build_fixture(name: str, directory: str | Path | None = None) -> Path:
    """Parquet file of fixture ``name``, written once (atomically) and reused."""
    import datasets

    fixture_split(name)
    directory = Path(directory) if directory else default_fixture_dir()
    path = directory / f"{name}.parquet"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    rows = FIXTURES[name][0]()
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    features = datasets.Dataset.from_dict({k: v for k, v in columns.items() if k != "image"}).features
    features["image"] = datasets.Image()
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    handle, tmp = tempfile.mkstemp(suffix=".parquet.tmp", dir=directory)
    os.close(handle)
    dataset.to_parquet(tmp)
    os.replace(tmp, path)
    return path


def fixture_digest(name: str) -> str:
    """Content hash of a fixture's rows, recorded with results that used it."""
    rows = FIXTURES[name][0]()
    text = json.dumps([{k: v for k, v in r.items() if k != "image"} for r in rows], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
