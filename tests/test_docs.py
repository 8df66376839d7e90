"""Each method's prose lives in one place: docs/methods.md for every method it lists (the papers' methods and
their variants: an overview row and a section each), the module docstring and the YAML's header comment for
any other compressor (so a new method is one module + one YAML + one test). The README points there instead
of listing the compressors by hand."""

import importlib
import re

from gc2bench.config import CONF_DIR, build_compressor, compose_run_config, config_names

from conftest import REPO

METHODS = (REPO / "docs" / "methods.md").read_text()
README = (REPO / "README.md").read_text()


def overview_names() -> set[str]:
    overview = METHODS[METHODS.index("## The methods at a glance") : METHODS.index("## The model pipeline")]
    listed = set(re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", overview, flags=re.M))
    return {name for cell in listed for name in re.findall(r"`(\w+)`", cell)}


def test_methods_doc_sections_cover_its_overview():
    names = overview_names()
    assert names <= set(config_names("compressor")) and {"none", "globalcom2", "fastv", "pdrop", "sparsevlm"} <= names
    headings = "\n".join(line for line in METHODS.splitlines() if line.startswith("#"))
    for name in names - {"none"}:
        assert f"`compressor={name}`" in headings or f"`{name}`" in headings, name


def test_every_compressor_is_described_by_its_module_and_yaml():
    """What a compressor without a docs/methods.md section relies on alone; every one has it."""
    for name in config_names("compressor"):
        text = (CONF_DIR / "compressor" / f"{name}.yaml").read_text()
        compressor = build_compressor(compose_run_config([f"compressor={name}"], check=False))
        module = importlib.import_module(type(compressor).__module__)
        assert text.startswith("# ") and len((module.__doc__ or "").split()) >= 10, name


def test_readme_points_to_the_methods_doc_and_lists_no_compressor_by_hand():
    section = README[README.index("## Compressors") : README.index("## Other tools")]
    assert "(docs/methods.md)" in section and "conf/compressor/" in section
    by_hand = [name for name in config_names("compressor") if re.search(rf"\|\s*`?{name}`?\s*\|", README)]
    assert not by_hand  # neither a table row nor a `a | b | c` list of choices
