"""The repo's copies of ../shared's data (tests/data, experiments/*/*.csv) are the only ones the tests read;
where ../shared exists beside the repo they must equal it byte for byte."""

import pytest

from conftest import DATA, REPO, SHARED, paper_table

SHARED_DIR = {".json": "vectors", ".csv": "paper_tables"}
COPIES = sorted([*DATA.iterdir(), *REPO.glob("experiments/*/*.csv")])


def test_tests_data_holds_only_copies_of_shared_files():
    assert sorted(path.name for path in DATA.iterdir()) == [
        "globalcom2_reference.json",
        "tcsvt_table5_6_efficiency.csv",
    ]


def test_each_paper_table_has_one_copy_in_the_repo():
    names = [path.name for path in COPIES if path.suffix == ".csv"]
    assert len(names) == len(set(names)) == 6
    assert all(paper_table(name).is_file() for name in names)


@pytest.mark.parametrize("copy", COPIES, ids=lambda path: str(path.relative_to(REPO)))
def test_copy_equals_shared(copy):
    shared = SHARED / SHARED_DIR[copy.suffix] / copy.name
    if not SHARED.is_dir():
        pytest.skip(f"no {SHARED} beside the repo: nothing to compare with")
    assert shared.is_file(), f"{copy.relative_to(REPO)} has no counterpart {shared}"
    assert copy.read_bytes() == shared.read_bytes(), f"{copy.relative_to(REPO)} differs from {shared}"
