"""Each method's prose lives in docs/methods.md: it covers every conf/compressor config, and the README
points there instead of listing the compressors by hand."""

import re

from gc2bench.config import config_names

from conftest import REPO

METHODS = (REPO / "docs" / "methods.md").read_text()
README = (REPO / "README.md").read_text()


def test_methods_doc_has_every_compressor_in_its_overview_and_a_section():
    overview = METHODS[METHODS.index("## The methods at a glance") : METHODS.index("## The model pipeline")]
    listed = set(re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", overview, flags=re.M))
    names = {name for cell in listed for name in re.findall(r"`(\w+)`", cell)}
    assert names == set(config_names("compressor"))
    headings = "\n".join(line for line in METHODS.splitlines() if line.startswith("#"))
    for name in set(config_names("compressor")) - {"none"}:
        assert f"`compressor={name}`" in headings or f"`{name}`" in headings, name


def test_readme_points_to_the_methods_doc_and_lists_no_compressor_by_hand():
    section = README[README.index("## Compressors") : README.index("## Other tools")]
    assert "(docs/methods.md)" in section and "conf/compressor/" in section
    by_hand = [name for name in config_names("compressor") if re.search(rf"\|\s*`?{name}`?\s*\|", README)]
    assert not by_hand  # neither a table row nor a `a | b | c` list of choices
