"""A dry run of every published cell: each experiment's every (method, ratio) job on ``model=tiny_deep``
(the tiny LLaVA-NeXT with LLaVA-NeXT-7B's 32 decoder layers, so schedules run at the papers' layer indices)
and the offline fixtures, two samples per task. Every cell must leave a done record per task (MM-Vet:
skipped, its judge has no key), made under the experiment's protocol for that row; no failure, no
unreachable ratio.

Cheap by construction: one process, every job composed in-process (``compose_run_config``, the experiment's own
sweep) and run by ``gc2bench.run.run``, all experiments writing to one results directory, so a cell that
several experiments share (the baseline, TCSVT Table II's on the same tiny model) runs once.
    python -m pytest tests/test_dry_run_every_cell.py -m slow
"""

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from gc2bench.config import compose_run_config
from gc2bench.results.records import read_record, record_path
from gc2bench.run import RunFailed, run, run_directory, suite_entries

from conftest import REPO

EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
DRY = ["model=tiny_deep", "suite=paper10_fixtures", "suite.limit=2"]
SKIPPED_WITHOUT_KEY = {"mmvet"}


def compose_config(overrides, hydra: bool = False):
    return compose_run_config(list(overrides), check=False, return_hydra_config=hydra)


def sweep_jobs(cfg) -> list[list[str]]:
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch] or [[]]


@pytest.fixture(scope="module")
def shared_results(tmp_path_factory):
    return tmp_path_factory.mktemp("dry-run-results")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_cell_of_the_experiment_runs_on_tiny_deep(name, shared_results, cache_dir, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = [f"experiment={name}", *DRY, f"results_dir={shared_results}"]
    failures, cells = [], []
    for job in sweep_jobs(compose_config(base, hydra=True)):
        cfg = compose_config(base + job)
        assert cfg.model.name == "tiny_deep" and cfg.model.pipeline == "llava"
        cells.append((job, run_directory(cfg), suite_entries(cfg)))
        try:
            run(cfg)
        except RunFailed as error:
            failures.append(f"{' '.join(job)}: {error}")
        except Exception as error:  # a cell that cannot even start (an unreachable ratio, a bad schedule)
            failures.append(f"{' '.join(job)}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)
    for job, directory, entries in cells:
        for entry in entries:
            record = read_record(record_path(directory, entry["task"]))
            assert record is not None, f"{' '.join(job)} {entry['task']}: no record"
            expected = "skipped" if entry["task"] in SKIPPED_WITHOUT_KEY else "done"
            assert record["status"] == expected, f"{' '.join(job)} {entry['task']}: {record.get('error')}"
            if expected == "done":
                assert record["entry"] == entry  # this row's protocol (e.g. TextVQA OCR tokens)
                assert record["model"]["name"] == "tiny_deep" and record["model"]["pipeline"] == "llava"
                assert record["efficiency"]["samples"] == 2
                assert record["tokens"]["equivalent_image_tokens"]["mean"] > 0
