"""Images of local task data decoded strictly, one document at a time.

lmms-eval sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, so a truncated file decodes as a
normal image (its missing part a flat fill), and it decodes ``task_docs[0]`` while building a
task, so an unreadable first image fails the whole task. Local parquet data is therefore loaded
with its image columns undecoded (``undecoded_features``) and each document's images are decoded
when it is answered (``decode_images``, under ``strict_decoding``): a bad image fails its own
document only, and a truncated one is an error.
"""

from __future__ import annotations

import contextlib
import io
import json


@contextlib.contextmanager
def strict_decoding():
    """Truncated images raise while this is active (lmms-eval turns that off at import)."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def undecoded_features(parquet_path: str):
    """The ``datasets`` features of a parquet file written by ``datasets`` with every image column
    undecoded, or None when it has no image column (or says nothing of its features)."""
    import datasets
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(parquet_path).metadata or {}
        info = json.loads(metadata[b"huggingface"])["info"]["features"]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    features = datasets.Features.from_dict(info)
    found = []

    def undecode(feature):
        if isinstance(feature, datasets.Image):
            found.append(feature)
            return datasets.Image(decode=False)
        if isinstance(feature, datasets.List):
            return datasets.List(undecode(feature.feature), length=feature.length)
        if isinstance(feature, dict):
            return {key: undecode(value) for key, value in feature.items()}
        return feature

    features = datasets.Features({key: undecode(value) for key, value in features.items()})
    return features if found else None


def _is_undecoded(value) -> bool:
    return isinstance(value, dict) and set(value) == {"bytes", "path"}


def decode_images(doc: dict) -> dict:
    """``doc`` with its undecoded images (``{"bytes", "path"}``) decoded strictly; an unreadable or
    truncated image raises ``OSError`` naming the column."""
    from PIL import Image

    def decode(column, value):
        if _is_undecoded(value):
            source = io.BytesIO(value["bytes"]) if value["bytes"] is not None else value["path"]
            try:
                with strict_decoding():
                    image = Image.open(source)
                    image.load()
            except Exception as error:
                raise OSError(f"image column {column!r} cannot be decoded ({type(error).__name__}: {error})") from None
            return image
        if isinstance(value, list) and value and all(_is_undecoded(v) for v in value):
            return [decode(column, v) for v in value]
        return value

    if not any(_is_undecoded(v) or (isinstance(v, list) and v and _is_undecoded(v[0])) for v in doc.values()):
        return doc
    return {column: decode(column, value) for column, value in doc.items()}
