"""Small local datasets in the schemas of real lmms-eval tasks, built deterministically.

Each fixture is a parquet file whose columns (names and types) are those of the task's hub
dataset, so lmms-eval's own task definition (prompt, filters, metric) runs on it unchanged
through a dict override ``{"task": <name>, "dataset_path": "parquet", "dataset_kwargs": {...}}``.
Images are drawn here (coloured shapes or a word, a few kilobytes each) at sizes that exercise
different AnyRes grids. A fixture's file name carries the digest of its rows, so a changed
fixture is rebuilt rather than read from a stale cache.

Schemas follow the lmms-lab dataset cards that lmms-eval 0.7.3's tasks read (its
``lmms-lab-encoder/*`` paths mirror them). GQA's instructions need a second file, its image
table (``gqa_images``), joined on ``imageId`` as the task's ``process_docs`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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


def draw_word(size: tuple[int, int], word: str) -> Image.Image:
    """A white sign with ``word`` in black (PIL's built-in font), for the text-reading tasks."""
    image = Image.new("RGB", size, (250, 250, 245))
    ImageDraw.Draw(image).text((4, size[1] // 2 - 6), word, fill=(0, 0, 0))
    return image


def _pope_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, asked, category) in enumerate(
        [
            (SIZES[0], "red", "circle", "circle", "adversarial"),
            (SIZES[1], "blue", "square", "circle", "popular"),
            (SIZES[2], "green", "square", "square", "random"),
            (SIZES[3], "red", "square", "circle", "adversarial"),
            (SIZES[4], "blue", "circle", "circle", "random"),
        ]
    ):
        rows.append(
            {
                "id": str(i),
                "question_id": str(i),
                "question": f"Is there a {asked} in the image?",
                "answer": "yes" if asked == shape else "no",
                "image_source": f"gc2bench_fixture_{i}",
                "category": category,
                "image": draw_image(i, size, color, shape),
            }
        )
    return rows


def _vqav2_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, question, answer, answer_type) in enumerate(
        [
            (SIZES[0], "red", "circle", "What color is the circle?", "red", "other"),
            (SIZES[1], "blue", "square", "Is there a square?", "yes", "yes/no"),
            (SIZES[2], "green", "circle", "How many circles are there?", "1", "number"),
            (SIZES[4], "blue", "square", "Is the square red?", "no", "yes/no"),
        ]
    ):
        answers = [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        rows.append(
            {
                "question_type": question.split(" ")[0].lower(),
                "multiple_choice_answer": answer,
                "answers": answers,
                "image_id": 1000 + i,
                "answer_type": answer_type,
                "question_id": 5000 + i,
                "question": question,
                "image": draw_image(i, size, color, shape),
            }
        )
    return rows


GQA_IMAGES = [
    ("n1001", SIZES[0], "red", "circle"),
    ("n1002", SIZES[4], "blue", "square"),
    ("n1003", SIZES[2], "green", "circle"),
]


def _gqa_rows() -> list[dict]:
    """lmms-lab/GQA ``testdev_balanced_instructions`` (no image column: the task joins ``gqa_images``)."""
    rows = []
    for i, (image_id, question, answer, full_answer, kind) in enumerate(
        [
            ("n1001", "What color is the circle?", "red", "The circle is red.", ("query", "attr", "colorObj")),
            ("n1001", "Is there a square?", "no", "No, there is a circle.", ("verify", "obj", "exist")),
            (
                "n1002",
                "Which shape is in the picture?",
                "square",
                "The shape is a square.",
                ("query", "cat", "categoryObj"),
            ),
            ("n1003", "Is the circle green?", "yes", "Yes, the circle is green.", ("verify", "attr", "verifyAttr")),
        ]
    ):
        question_id = f"20{i}1001"
        rows.append(
            {
                "id": question_id,
                "imageId": image_id,
                "question": question,
                "answer": answer,
                "fullAnswer": full_answer,
                "isBalanced": True,
                "groups": {"global": None if kind[0] == "verify" else answer, "local": f"{kind[2]}-{answer}"},
                "entailed": json.dumps([f"20{i}1002"]),
                "equivalent": json.dumps([question_id]),
                "types": {"structural": kind[0], "semantic": kind[1], "detailed": kind[2]},
                "annotations": [
                    {
                        "question": [{"objectId": f"{image_id}-o1", "value": "shape"}],
                        "answer": [{"objectId": f"{image_id}-o1", "value": answer}],
                        "fullAnswer": [{"objectId": f"{image_id}-o1", "value": answer}],
                    }
                ],
                "semantic": [
                    {"operation": "select", "argument": f"shape ({image_id}-o1)", "dependencies": []},
                    {"operation": kind[2], "argument": answer, "dependencies": [0]},
                ],
                "semanticStr": f"select: shape ({image_id}-o1)->{kind[2]}: {answer} [0]",
            }
        )
    return rows


def _gqa_image_rows() -> list[dict]:
    """lmms-lab/GQA ``testdev_balanced_images``: ``id``, ``image``."""
    return [
        {"id": image_id, "image": draw_image(i, size, color, shape)}
        for i, (image_id, size, color, shape) in enumerate(GQA_IMAGES)
    ]


def _vizwiz_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, question, answers, category) in enumerate(
        [
            (SIZES[0], "red", "circle", "what color is this?", ["red"] * 8 + ["pink", "orange"], "other"),
            (
                SIZES[3],
                "blue",
                "square",
                "what is written on this label?",
                ["unanswerable"] * 9 + ["blue"],
                "unanswerable",
            ),
            (SIZES[1], "green", "square", "is this a square?", ["yes"] * 7 + ["no"] * 3, "yes/no"),
            (SIZES[4], "blue", "circle", "how many circles are there?", ["1"] * 6 + ["one"] * 4, "number"),
        ]
    ):
        rows.append(
            {
                "question_id": f"VizWiz_val_{i:08d}",
                "image": draw_image(i, size, color, shape),
                "question": question,
                "answers": answers,
                "category": category,
            }
        )
    return rows


def _scienceqa_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, question, choices, answer, hint) in enumerate(
        [
            (SIZES[0], "red", "circle", "Which shape is shown?", ["square", "circle"], 1, ""),
            (
                SIZES[4],
                "blue",
                "square",
                "What color is the shape?",
                ["red", "green", "blue"],
                2,
                "The picture shows one coloured shape.",
            ),
            (
                SIZES[2],
                "green",
                "circle",
                "Which of these describes the shape?",
                ["round", "has corners", "a line", "a triangle"],
                0,
                "",
            ),
            (SIZES[1], "blue", "square", "Is the shape filled?", ["yes", "no"], 0, "Look at the middle."),
        ]
    ):
        rows.append(
            {
                "image": draw_image(i, size, color, shape),
                "question": question,
                "choices": choices,
                "answer": answer,
                "hint": hint,
                "task": "closed choice",
                "grade": "grade2",
                "subject": "natural science",
                "topic": "science-and-engineering-practices",
                "category": "Identify shapes",
                "skill": "Identify shapes and colors",
                "lecture": "Shapes can be round or have corners.",
                "solution": f"The answer is {choices[answer]}.",
            }
        )
    return rows


def _textvqa_rows() -> list[dict]:
    rows = []
    for i, (size, word, question, answers) in enumerate(
        [
            ((120, 40), "STOP", "what does the sign say?", ["stop"] * 9 + ["stop sign"]),
            ((168, 56), "CAFE 24", "what number is on the sign?", ["24"] * 10),
            ((80, 80), "EXIT", "what word is written here?", ["exit"] * 8 + ["exit sign", "exlt"]),
            ((200, 60), "OPEN", "is the shop open or closed?", ["open"] * 10),
        ]
    ):
        rows.append(
            {
                "image_id": f"{0xABC0 + i:016x}",
                "question_id": 34602 + i,
                "question": question,
                "question_tokens": question.rstrip("?").split(),
                "image": draw_word(size, word),
                "image_width": size[0],
                "image_height": size[1],
                "flickr_original_url": f"https://example.org/gc2bench/{i}.jpg",
                "flickr_300k_url": f"https://example.org/gc2bench/{i}_300k.jpg",
                "answers": answers,
                "image_classes": ["Street sign", "Signage"],
                "set_name": "val",
                "ocr_tokens": word.lower().split(),
            }
        )
    return rows


def _mme_rows() -> list[dict]:
    """Two image pairs (MME scores each image's two questions together): one perception, one cognition."""
    rows = []
    perception, cognition = draw_image(0, SIZES[0], "red", "circle"), draw_image(1, SIZES[4], "blue", "square")
    for question_id, image, question, answer, category in [
        ("existence/gc2bench_0.png", perception, "Is there a circle in this image?", "Yes", "existence"),
        ("existence/gc2bench_0.png", perception, "Is there a square in this image?", "No", "existence"),
        (
            "commonsense_reasoning/gc2bench_1.png",
            cognition,
            "Is the shape in the image blue?",
            "Yes",
            "commonsense_reasoning",
        ),
        (
            "commonsense_reasoning/gc2bench_1.png",
            cognition,
            "Could this shape roll like a ball?",
            "No",
            "commonsense_reasoning",
        ),
    ]:
        rows.append(
            {
                "question_id": question_id,
                "image": image,
                "question": f"{question} Please answer yes or no.",
                "answer": answer,
                "category": category,
            }
        )
    return rows


def _mmbench_rows(language: str) -> list[dict]:
    """Three questions, the second also in a circular variant (index + 10⁶, options rotated)."""
    en = language == "en"
    items = [
        (
            0,
            SIZES[0],
            "red",
            "circle",
            "What color is the shape?" if en else "图形是什么颜色？",
            ["red", "green", "blue", "black"] if en else ["红色", "绿色", "蓝色", "黑色"],
            "A",
            None,
        ),
        (
            1,
            SIZES[4],
            "blue",
            "square",
            "Which shape is shown?" if en else "图中是什么形状？",
            ["circle", "square", "triangle", None] if en else ["圆形", "正方形", "三角形", None],
            "B",
            "The image shows one shape." if en else "图中只有一个图形。",
        ),
        (
            2,
            SIZES[2],
            "green",
            "circle",
            "How many shapes are there?" if en else "图中有几个图形？",
            ["one", "two", None, None] if en else ["一个", "两个", None, None],
            "A",
            None,
        ),
        (
            1000001,
            SIZES[4],
            "blue",
            "square",
            "Which shape is shown?" if en else "图中是什么形状？",
            ["square", "triangle", "circle", None] if en else ["正方形", "三角形", "圆形", None],
            "A",
            "The image shows one shape." if en else "图中只有一个图形。",
        ),
    ]
    rows = []
    for index, size, color, shape, question, options, answer, hint in items:
        rows.append(
            {
                "index": index,
                "question": question,
                "hint": hint,
                "answer": answer,
                "A": options[0],
                "B": options[1],
                "C": options[2],
                "D": options[3],
                "category": "attribute_recognition",
                "image": draw_image(index % 5, size, color, shape),
                "source": "gc2bench",
                "L2-category": "finegrained_perception (instance-level)",
                "comment": None,
                "split": "dev",
            }
        )
    return rows


def _mmvet_rows() -> list[dict]:
    rows = []
    for i, (size, color, shape, question, answer, capability) in enumerate(
        [
            (SIZES[0], "red", "circle", "What color is the circle?", "red", "rec"),
            (SIZES[4], "blue", "square", "What shape is shown and what is its color?", "square<AND>blue", "rec,spat"),
            (SIZES[2], "green", "circle", "How many circles are in the image?", "1<OR>one", "rec,math"),
        ]
    ):
        rows.append(
            {
                "question_id": f"v1_{i}",
                "image": draw_image(i, size, color, shape),
                "question": question,
                "answer": answer,
                "image_source": f"gc2bench_{i}",
                "capability": capability,
            }
        )
    return rows


def fixture_features(name: str):
    """The hub dataset's ``datasets.Features`` for fixture ``name`` (None: inferred from the rows)."""
    from datasets import Features, Image, List, Value

    string, int32, int64 = Value("string"), Value("int32"), Value("int64")
    object_ref = List({"objectId": string, "value": string})
    schemas = {
        "gqa": {
            "id": string,
            "imageId": string,
            "question": string,
            "answer": string,
            "fullAnswer": string,
            "isBalanced": Value("bool"),
            "groups": {"global": string, "local": string},
            "entailed": string,
            "equivalent": string,
            "types": {"structural": string, "semantic": string, "detailed": string},
            "annotations": List({"question": object_ref, "answer": object_ref, "fullAnswer": object_ref}),
            "semantic": List({"operation": string, "argument": string, "dependencies": List(int32)}),
            "semanticStr": string,
        },
        "gqa_images": {"id": string, "image": Image()},
        "vizwiz_vqa": {
            "question_id": string,
            "image": Image(),
            "question": string,
            "answers": List(string),
            "category": string,
        },
        "scienceqa_img": {
            "image": Image(),
            "question": string,
            "choices": List(string),
            "answer": Value("int8"),
            **{
                key: string
                for key in ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
            },
        },
        "textvqa": {
            "image_id": string,
            "question_id": int32,
            "question": string,
            "question_tokens": List(string),
            "image": Image(),
            "image_width": int32,
            "image_height": int32,
            "flickr_original_url": string,
            "flickr_300k_url": string,
            "answers": List(string),
            "image_classes": List(string),
            "set_name": string,
            "ocr_tokens": List(string),
        },
        "mme": {"question_id": string, "image": Image(), "question": string, "answer": string, "category": string},
        "mmvet": {
            "question_id": string,
            "image": Image(),
            "question": string,
            "answer": string,
            "image_source": string,
            "capability": string,
        },
    }
    mmbench = {
        "index": int64,
        "question": string,
        "hint": string,
        "answer": string,
        "A": string,
        "B": string,
        "C": string,
        "D": string,
        "category": string,
        "image": Image(),
        "source": string,
        "L2-category": string,
        "comment": string,
        "split": string,
    }
    schemas["mmbench_en"] = schemas["mmbench_cn"] = mmbench
    return Features(schemas[name]) if name in schemas else None


class Fixture(NamedTuple):
    rows: Callable[[], list[dict]]
    split: str  # the split the task reads by default (a lite task reads its own)
    task: str  # the lmms-eval task the fixture is written for


FIXTURES = {
    "pope": Fixture(_pope_rows, "test", "pope"),
    "vqav2": Fixture(_vqav2_rows, "validation", "vqav2_val"),
    "gqa": Fixture(_gqa_rows, "testdev", "gqa"),
    "gqa_images": Fixture(_gqa_image_rows, "testdev", "gqa"),
    "vizwiz_vqa": Fixture(_vizwiz_rows, "val", "vizwiz_vqa_val"),
    "scienceqa_img": Fixture(_scienceqa_rows, "test", "scienceqa_img"),
    "textvqa": Fixture(_textvqa_rows, "validation", "textvqa_val"),
    "mme": Fixture(_mme_rows, "test", "mme"),
    "mmbench_en": Fixture(lambda: _mmbench_rows("en"), "dev", "mmbench_en_dev"),
    "mmbench_cn": Fixture(lambda: _mmbench_rows("cn"), "dev", "mmbench_cn_dev"),
    "mmvet": Fixture(_mmvet_rows, "test", "mmvet"),
}
# Fixtures that travel with another one rather than being a task's documents.
COMPANIONS = {"gqa": "gqa_images"}


def default_fixture_dir() -> Path:
    root = Path(os.environ.get("GC2BENCH_CACHE", Path.home() / ".cache" / "gc2bench"))
    return root / f"fixtures-v{FIXTURE_VERSION}"


def _fixture(name: str) -> Fixture:
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; available: {sorted(FIXTURES)}")
    return FIXTURES[name]


def fixture_split(name: str) -> str:
    return _fixture(name).split


def fixture_rows(name: str) -> list[dict]:
    """The rows of fixture ``name`` as Python values (PIL images in image columns)."""
    return _fixture(name).rows()


def build_fixture(name: str, directory: str | Path | None = None) -> Path:
    """Parquet file of fixture ``name`` (one split, the hub schema), written once (atomically) and reused."""
    import datasets

    _fixture(name)
    directory = Path(directory) if directory else default_fixture_dir()
    path = directory / f"{name}-{fixture_digest(name)}.parquet"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows(name)
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    features = fixture_features(name)
    if features is None:
        features = datasets.Dataset.from_dict({k: v for k, v in columns.items() if k != "image"}).features
        features["image"] = datasets.Image()
        features = datasets.Features({key: features[key] for key in columns})
    dataset = datasets.Dataset.from_dict(columns, features=features)
    handle, tmp = tempfile.mkstemp(suffix=".parquet.tmp", dir=directory)
    os.close(handle)
    dataset.to_parquet(tmp)
    os.replace(tmp, path)
    return path


def fixture_digest(name: str) -> str:
    """Content hash of a fixture's rows (images as their pixels), recorded with results that used it."""
    digest = hashlib.sha256(f"v{FIXTURE_VERSION}".encode())
    for row in fixture_rows(name):
        for key in sorted(row):
            value = row[key]
            if isinstance(value, Image.Image):
                digest.update(f"{key}:{value.size}".encode() + value.tobytes())
            else:
                digest.update(f"{key}:{json.dumps(value, sort_keys=True, ensure_ascii=False)}".encode())
    return digest.hexdigest()[:12]
