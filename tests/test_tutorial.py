"""docs/tutorial.md stays runnable: its commands parse and compose as today's CLI and configs
take them, the files it names exist, its pictures are small, and the README links it."""

import itertools
import re
import shlex
from pathlib import Path

import pytest

from gc2bench.cli import build_parser
from gc2bench.config import compose_run_config
from gc2bench.evaluation.suite import check_suite
from gc2bench.inspection import split_arguments

from conftest import REPO

TUTORIAL = REPO / "docs" / "tutorial.md"


def commands() -> list[list[str]]:
    """The one-line ``$ python run.py …`` and ``$ gc2bench …`` commands of the tutorial, as argv."""
    lines = re.findall(r"^\$ ((?:python run\.py|gc2bench) .*)$", TUTORIAL.read_text(), flags=re.M)
    return [shlex.split(line.replace("$PHOTO", "photo.jpg").partition(" > ")[0]) for line in lines]


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job of a ``-m`` sweep: the product of the comma-separated values."""
    options = [
        [f"{key}={value}" for value in values.split(",")]
        for key, _, values in (override.partition("=") for override in overrides)
    ]
    return [list(job) for job in itertools.product(*options)]


def test_tutorial_has_every_step():
    argv = commands()
    assert [a[:2] for a in argv if a[0] == "gc2bench"] == [
        ["gc2bench", "env"],
        ["gc2bench", "table"],
        ["gc2bench", "plot"],
        ["gc2bench", "inspect"],
    ]
    sweeps = [a for a in argv if a[:3] == ["python", "run.py", "-m"]]
    assert sum(len(expand(a[3:])) == 12 for a in sweeps) == 2  # the sweep and its resumption


@pytest.mark.parametrize("argv", [a for a in commands() if a[:2] == ["python", "run.py"]], ids=" ".join)
def test_run_commands_compose(argv):
    overrides = argv[2:]
    jobs = expand(overrides[1:]) if overrides[:1] == ["-m"] else [overrides]
    for job in jobs:
        cfg = compose_run_config(job)
        check_suite(cfg)
        assert cfg.results_dir.startswith("/tmp/")


@pytest.mark.parametrize("argv", [a for a in commands() if a[0] == "gc2bench"], ids=" ".join)
def test_tool_commands_parse(argv):
    args = build_parser().parse_args(argv[1:])
    if argv[1] == "inspect":
        own, overrides = split_arguments(args.overrides)
        assert own["viz"] and own["prompt"] == "Who is this?"
        check_suite(compose_run_config(overrides))
    if getattr(args, "paper", None):
        assert (REPO / args.paper).is_file()


def test_pictures_exist_and_are_small():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TUTORIAL.read_text())
    assert "img/tutorial_ratio.png" in pictures and len(pictures) == 3
    for picture in pictures:
        path = TUTORIAL.parent / picture
        assert path.stat().st_size < 100_000, f"{picture}: {path.stat().st_size} bytes"
    plot = next(a for a in commands() if a[:2] == ["gc2bench", "plot"])
    assert plot[plot.index("--out") + 1] == "docs/img/tutorial_ratio.png"


def test_links_resolve_and_readme_links_tutorial():
    for link in re.findall(r"\]\(([^)#]+\.md)\)", TUTORIAL.read_text()):
        assert (TUTORIAL.parent / link).is_file(), link
    assert "(docs/tutorial.md)" in (REPO / "README.md").read_text()
    assert Path(REPO / "experiments/tcsvt_table1/README.md").is_file()
