"""`gc2bench inspect`: one image, Hydra overrides, JSON on stdout, optional figure."""

import json

import pytest
from PIL import Image

from gc2bench.cli import main

KEYS = {"visual_tokens_before", "visual_tokens_kept", "newline_tokens", "kept_per_view", "crop_budgets", "answer"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "photo.png"
    Image.new("RGB", (150, 90), (255, 0, 0)).save(path)
    return path


def run_inspect(capsys, *arguments):
    code = main(["inspect", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("compressor", ["none", "globalcom2", "fastervlm", "random"])
def test_inspect_prints_json_and_draws_the_kept_tokens(capsys, cache_dir, photo, tmp_path, compressor):
    figure = tmp_path / f"{compressor}.png"
    code, out, _ = run_inspect(
        capsys,
        f"image={photo}",
        "prompt=What is this?",
        f"compressor={compressor}",
        "ratio=0.25",
        f"viz={figure}",
        "max_new_tokens=3",
    )
    assert code == 0
    report = json.loads(out)
    assert KEYS <= set(report)
    assert report["compressor"]["name"] == compressor
    kept = report["visual_tokens_kept"]
    assert kept == sum(report["kept_per_view"]) + report["newline_tokens"]
    if compressor == "none":
        assert kept == report["visual_tokens_before"] and report["crop_budgets"] is None
    else:
        assert report["kept_per_view"][0] == 4  # 16 thumbnail tokens at R = 0.25
        assert kept < report["visual_tokens_before"]
    assert (report["crop_budgets"] is not None) == (compressor == "globalcom2")
    with Image.open(figure) as image:
        rows, cols = report["grid"]
        assert image.width > 224 * (1 + cols) and image.height > 224 * rows


def test_inspect_errors_name_the_bad_value(capsys, cache_dir, tmp_path):
    code, out, err = run_inspect(capsys, f"image={tmp_path / 'missing.jpg'}")
    assert code == 2 and "missing.jpg: no such file" in err and out == ""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code, _, err = run_inspect(capsys, f"image={broken}")
    assert code == 2 and "broken.jpg: cannot read image" in err
    code, _, err = run_inspect(capsys, "prompt=hi")
    assert code == 2 and "image=PATH is required" in err
    code, _, err = run_inspect(capsys, f"image={broken}", "ratio=2")
    assert code == 2 and "ratio=2 is out of range" in err
    code, _, err = run_inspect(capsys, f"image={broken}", "compressor=nope")
    assert code == 2 and "compressor/nope" in err and "globalcom2" in err


@pytest.mark.parametrize(
    "compressor",
    [
        ["compressor=none"],
        ["compressor=globalcom2", "compressor.score=cosine"],
        ["compressor=fastervlm", "compressor.score=cosine"],
        ["compressor=random"],
    ],
)
def test_inspect_on_the_tiny_onevision(capsys, cache_dir, photo, tmp_path, compressor):
    figure = tmp_path / "kept.png"
    code, out, err = run_inspect(
        capsys, "model=tiny_onevision", f"image={photo}", *compressor, "ratio=0.25", f"viz={figure}", "max_new_tokens=2"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["model"]["architecture"] == "LlavaOnevisionForConditionalGeneration"
    assert report["visual_tokens_kept"] == sum(report["kept_per_view"]) + report["newline_tokens"]
    assert (report["visual_tokens_kept"] == report["visual_tokens_before"]) == (compressor == ["compressor=none"])
    with Image.open(figure) as image:
        assert image.width > 224 * (1 + report["grid"][1])


def test_inspect_refuses_cls_scores_on_onevision(capsys, cache_dir, photo):
    code, _, err = run_inspect(capsys, "model=tiny_onevision", f"image={photo}", "compressor=fastervlm")
    assert code == 2 and "has no CLS token; add compressor.score=cosine" in err


@pytest.mark.parametrize(
    "arguments, protocol",
    [([], "lmms_eval"), (["protocol=llava_eval"], "llava_eval"), (["suite.protocol=llava_eval"], "llava_eval")],
)
def test_inspect_shows_the_prompt_the_protocol_renders(capsys, cache_dir, photo, arguments, protocol):
    code, out, _ = run_inspect(capsys, f"image={photo}", "prompt=What is this?", "max_new_tokens=2", *arguments)
    assert code == 0
    report = json.loads(out)
    assert report["protocol"] == protocol
    if protocol == "llava_eval":
        assert report["prompt"] == (
            "A chat between a curious user and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: <image>\nWhat is this? ASSISTANT:"
        )
        assert report["template"] == "vicuna_v1" and report["prompt"] != report["checkpoint_prompt"]
    else:
        assert report["prompt"] == report["checkpoint_prompt"] == "USER: <image>\nWhat is this? ASSISTANT:"


def test_inspect_names_a_bad_protocol(capsys, cache_dir, photo):
    code, _, err = run_inspect(capsys, f"image={photo}", "protocol=paper")
    assert code == 2 and "suite.protocol='paper' is not one of lmms_eval, llava_eval" in err
