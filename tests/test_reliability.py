"""Results that cannot be mistaken: bad inputs of every kind driven through the real CLI and run path.

Each case asserts its outcome: one line naming the bad value before any model loads (exit 2), a
recorded per-sample failure naming the document, a failed (never done) task, or a record that is
redone because it was not made by this run's model, checkpoint or protocol.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gc2bench.config import compose_run_config
from gc2bench.results.records import RECORD_FORMAT, params_digest, read_record, record_path
from gc2bench.run import run, run_directory, run_is_finished

from conftest import REPO


def compose(*overrides):
    return compose_run_config(list(overrides), check=False)


def run_py(*overrides, cwd=REPO, timeout=300):
    return subprocess.run(
        [sys.executable, "run.py", *overrides, "hydra.run.dir=/tmp/gc2bench-test-hydra"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )


def one_record(directory: Path, task: str) -> dict:
    [path] = list(directory.rglob(f"{task}.json"))
    return read_record(path)


# -- §1 record identity -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A finished one-task run (tiny, seed 0, POPE on 2 documents) and its overrides."""
    results = tmp_path_factory.mktemp("identity")
    overrides = [f"results_dir={results}", "compressor=none", "tasks=[pope]", "suite.limit=2"]
    [record] = run(compose(*overrides))
    return results, overrides, record


def test_a_record_says_which_model_checkpoint_and_protocol_made_it(finished):
    _, _, record = finished
    identity = record["identity"]
    assert identity["model"] == {
        "_target_": "gc2bench.models.tiny.load_tiny_llava_next",
        "name": "tiny",
        "seed": 0,
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "sdpa",
        "pipeline": "transformers",
    }
    checkpoint = identity["checkpoint"]
    assert Path(checkpoint["dir"]).name.endswith("-seed0") and len(checkpoint["fingerprint"]) == 16
    assert identity["protocol"] == {
        "entry": {"task": "pope", "fixture": "pope", "metric": "pope_accuracy", "scale": 100},
        "suite": {"limit": 2, "protocol": "lmms_eval"},
        "seed": 0,
    }
    assert record["model"]["checkpoint"] == checkpoint and record["versions"]["torch"]


@pytest.mark.parametrize(
    "change",
    [
        "model.seed=1",
        "model.dtype=bfloat16",
        "model.attn_implementation=eager",
        "model.pipeline=llava",
        "model.name=tiny",
        "model.device=meta",
    ],
)
def test_any_model_key_is_another_run_directory(finished, change):
    _, overrides, _ = finished
    same = run_directory(compose(*overrides, "model.name=tiny"))
    assert run_directory(compose(*overrides)) == same
    if change != "model.name=tiny":
        assert run_directory(compose(*overrides, change)) != same
        assert not run_is_finished(compose(*overrides, change))


@pytest.mark.parametrize(
    "change, own_directory",
    [
        ("suite.protocol=llava_eval", True),
        ("suite.limit=3", True),
        ("seed=1", True),
        ("suite=paper10_fixtures", True),
        ("suite.tasks.pope.scale=1", False),
    ],
)
def test_any_suite_key_that_scores_counts_in_the_task_key(finished, change, own_directory):
    """Suite-level keys and the seed give the run its own directory (a quick suite.limit check never writes over
    the full run's records); a task entry's key redoes that task's record."""
    _, overrides, _ = finished
    assert run_is_finished(compose(*overrides))
    assert (run_directory(compose(*overrides, change)) != run_directory(compose(*overrides))) is own_directory
    assert not run_is_finished(compose(*overrides, change))
    assert run_is_finished(compose(*overrides, "suite.batch_size=2"))  # how many at once does not score


def test_another_model_seed_is_run_not_reused(finished, capsys):
    _, overrides, record = finished
    [other] = run(compose(*overrides, "model.seed=1"))
    assert other["status"] == "done" and other["identity"]["model"]["seed"] == 1
    assert other["identity"]["checkpoint"]["fingerprint"] != record["identity"]["checkpoint"]["fingerprint"]
    assert "skip pope" not in capsys.readouterr().out


def test_changed_checkpoint_files_redo_the_record(tmp_path, tiny_path, capsys):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_path, checkpoint)
    overrides = [
        f"results_dir={tmp_path}",
        "compressor=none",
        "tasks=[pope]",
        "suite.limit=1",
        "model._target_=gc2bench.models.llava_next.LlavaNextAdapter",
        "~model.seed",
        f"+model.path={checkpoint}",
    ]
    [record] = run(compose(*overrides))
    assert record["identity"]["checkpoint"]["dir"] == str(checkpoint.resolve())
    assert run_is_finished(compose(*overrides))
    config = json.loads((checkpoint / "generation_config.json").read_text())
    (checkpoint / "generation_config.json").write_text(json.dumps({**config, "max_length": 4000}))
    assert not run_is_finished(compose(*overrides))
    capsys.readouterr()
    assert len(run(compose(*overrides))) == 1
    assert "redo pope: its record was made from other checkpoint files" in capsys.readouterr().out


def test_a_record_without_identity_is_said_once_and_rerun(tmp_path, cache_dir, capsys):
    overrides = [f"results_dir={tmp_path}", "compressor=none", "tasks=[pope]", "suite.limit=1"]
    [record] = run(compose(*overrides))
    path = record_path(run_directory(compose(*overrides)), "pope")
    old = {key: value for key, value in json.loads(path.read_text()).items() if key != "identity"}
    path.write_text(json.dumps(old))
    capsys.readouterr()
    assert not run_is_finished(compose(*overrides))
    assert len(run(compose(*overrides))) == 1
    out = capsys.readouterr().out
    assert out.count("redo pope: its record was written by an older gc2bench") == 1
    # an older gc2bench's directory (keyed by the compressor alone) is named, once
    legacy = tmp_path / "tiny" / f"none_r1_{params_digest(record['compressor']['params'])}"
    legacy.mkdir()
    (legacy / "pope.json").write_text(json.dumps(old))
    assert run(compose(*overrides)) == []
    assert capsys.readouterr().out.count(f"note: {legacy} holds records of an older gc2bench") == 1


@pytest.mark.parametrize("broken", [{"metrics": None}, {"tokens": None}, {"samples": []}, {"metrics": {"metric": "x"}}])
def test_a_done_record_missing_its_results_is_not_trusted(finished, broken):
    _, overrides, _ = finished
    path = record_path(run_directory(compose(*overrides)), "pope")
    original = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(original), **broken}))
        assert not run_is_finished(compose(*overrides))
    finally:
        path.write_text(original)
    assert run_is_finished(compose(*overrides))


def test_the_resuming_sweeper_uses_the_same_key(finished):
    results, overrides, _ = finished
    result = run_py(
        "-m",
        *[o for o in overrides if not o.startswith("results_dir")],
        f"results_dir={results}",
        "model.seed=0,2",
        f"hydra.sweep.dir={results}/sweep",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sweep: 1 runs already finished, not launched; 1 to run" in result.stdout
    seeds = sorted(read_record(p)["identity"]["model"]["seed"] for p in results.rglob("pope.json"))
    assert seeds in ([0, 1, 2], [0, 2])  # seed 1 when test_another_model_seed_is_run_not_reused ran first


# -- §2 nothing scored that should not be ----------------------------------------------------------


def bad_pope_parquet(directory: Path, cache_dir, doc_bytes: dict, questions: dict | None = None) -> Path:
    """The POPE fixture with the image bytes of some documents replaced (and some questions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gc2bench.evaluation.fixtures import build_fixture

    table = pq.read_table(build_fixture("pope"))
    images = table.column("image").to_pylist()
    for doc, make in doc_bytes.items():
        images[doc]["bytes"] = make(images[doc]["bytes"])
    table = table.set_column(
        table.schema.get_field_index("image"),
        table.schema.field("image"),
        pa.array(images, type=table.schema.field("image").type),
    )
    if questions:
        column = table.column("question").to_pylist()
        for doc, text in questions.items():
            column[doc] = text
        table = table.set_column(
            table.schema.get_field_index("question"), table.schema.field("question"), pa.array(column, type=pa.string())
        )
    path = directory / f"pope-bad-{len(list(directory.glob('pope-bad-*')))}.parquet"
    pq.write_table(table, path)
    return path


def local_pope(path: Path, task: str = "pope") -> str:
    return f"{{{task}:{{metric:pope_accuracy,scale:100,data_files:'{path}',split:test}}}}"


def test_bad_images_and_prompts_fail_their_own_document_only(tmp_path, cache_dir):
    """First document unreadable, second truncated, third a prompt past the context; the rest scored.
    A second task whose every image is unreadable is failed, not done."""
    mixed = bad_pope_parquet(
        tmp_path,
        cache_dir,
        {0: lambda b: b"not an image", 1: lambda b: b[: len(b) // 2]},
        {2: "is there a cat " * 1500},
    )
    broken = bad_pope_parquet(tmp_path, cache_dir, {doc: (lambda b: b"\x89PNG garbage") for doc in range(5)})
    result = run_py(
        f"results_dir={tmp_path / 'results'}", "compressor=none", "~suite.tasks", f"+suite.tasks={local_pope(mixed)}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pope = one_record(tmp_path / "results", "pope")
    assert pope["status"] == "done"
    failures = {f["doc_id"]: f["error"] for f in pope["failures"]}
    assert sorted(failures) == [0, 1, 2]
    assert "cannot be decoded" in failures[0]
    assert "truncated" in failures[1]
    assert "longer than the model's context of 2048 positions" in failures[2]
    assert [s["doc_id"] for s in pope["samples"]] == [3, 4]
    assert pope["efficiency"]["failed_samples"] == 3 and pope["efficiency"]["samples"] == 2
    for doc in (0, 1, 2):
        assert f"doc {doc} failed and is skipped" in result.stderr
    result = run_py(
        f"results_dir={tmp_path / 'broken'}", "compressor=none", "~suite.tasks", f"+suite.tasks={local_pope(broken)}"
    )
    assert result.returncode == 1 and "no sample was scored (5 failed; first: doc 0:" in result.stderr
    full = one_record(tmp_path / "broken", "pope")
    assert full["status"] == "failed" and full["error"].startswith("NoSampleScored: no sample was scored (5 failed")
    assert len(full["failures"]) == 5
    assert not run_is_finished(
        compose(
            f"results_dir={tmp_path / 'broken'}",
            "compressor=none",
            "~suite.tasks",
            f"+suite.tasks={local_pope(broken)}",
        )
    )


# -- §4 every value checked before the model loads --------------------------------------------------

BAD_VALUES = [
    ("suite.limit=0", "suite.limit=0 is out of range"),
    ("suite.limit=-3", "suite.limit=-3 is out of range"),
    ("suite.limit=2.5", "suite.limit=2.5 is not an integer"),
    ("suite.limit=many", "suite.limit='many' is not an integer"),
    ("suite.limit=true", "suite.limit=True is not an integer"),
    ("suite.batch_size=0", "suite.batch_size=0 is out of range"),
    ("suite.batch_size=two", "suite.batch_size='two' is not an integer"),
    ("suite.batch_size=1.5", "suite.batch_size=1.5 is not an integer"),
    ("seed=abc", "seed='abc' is not an integer"),
    ("seed=-1", "seed=-1 is out of range"),
    ("seed=0.5", "seed=0.5 is not an integer"),
    ("model.seed=x", "model.seed='x' is not an integer"),
    ("overwrite=no", "overwrite='no' is not true or false"),
    ("overwrite=maybe", "overwrite='maybe' is not true or false"),
    ("overwrite=1", "overwrite=1 is not true or false"),
    ("ratio=2", "ratio=2 is out of range"),
    ("ratio=nan", "ratio=nan is out of range"),
    ("model.device=cuda", "model.device=cuda: CUDA is not available on this machine"),
    ("model.device=cuda:3", "model.device=cuda:3: CUDA is not available on this machine"),
    ("model.device=toaster", "model.device='toaster' is not a torch device"),
    ("suite.tasks.pope.fixture=popee", "fixture='popee' is not one of"),
    (
        "~suite.tasks.pope.fixture +suite.tasks.pope.data_files=/no/such.parquet +suite.tasks.pope.split=test",
        "data_files=/no/such.parquet: no such file",
    ),
    ("+suite.tasks.pope.images_files=/no/images.parquet", "images_files=/no/images.parquet: no such file"),
    ("suite.tasks=null", "suite=smoke has no tasks"),
    ("suite.tasks.pope.metric=''", "every task needs `metric`"),
    ("model=llava_next_7b model.path=/no/such/ckpt", "model.path=/no/such/ckpt: no such directory"),
    ("model=llava_next_7b model.device=cuda", "model.device=cuda: CUDA is not available"),
    ("model.dtype=float8", "model.dtype='float8' is not one of"),
    ("compressor=globalcom2 compressor.allocation=bogus", "allocation='bogus' is not one of"),
    ("+suite.tasks.pope.bogus_key=1", "unknown key(s) ['bogus_key']"),
    ("tasks=[nope]", "tasks=['nope'] are not in suite=smoke"),
]


def _config_error(overrides: str) -> str:
    """The ConfigError message of composing, validating and building what run.py would (no model)."""
    from gc2bench.config import ConfigError, build_compressor
    from gc2bench.evaluation.suite import check_suite, validate_entry
    from gc2bench.run import suite_entries

    try:
        cfg = compose_run_config(overrides.split())
        check_suite(cfg)
        build_compressor(cfg)
        for entry in suite_entries(cfg):
            validate_entry(entry)
        if "model.dtype" in overrides:
            from gc2bench.models.adapter import DTYPES

            if cfg.model.dtype not in DTYPES:
                raise ConfigError(f"model.dtype={cfg.model.dtype!r} is not one of {sorted(DTYPES)}")
    except (ConfigError, ValueError) as error:
        return str(error)
    return ""


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_a_bad_value_is_one_error_naming_it(override, message, tmp_path):
    assert message in _config_error(f"results_dir={tmp_path} {override}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("overwrite=no", "error: overwrite='no' is not true or false"),
        ("suite.limit=0", "error: suite.limit=0 is out of range; suite.limit must be an integer >= 1 or null"),
        ("seed=abc", "error: seed='abc' is not an integer; seed must be an integer >= 0"),
        ("model.device=cuda", "error: model.device=cuda: CUDA is not available on this machine"),
        (
            "~suite.tasks.pope.fixture +suite.tasks.pope.data_files=/no/such.parquet +suite.tasks.pope.split=test",
            "data_files=/no/such.parquet: no such file",
        ),
        ("+suite.tasks.pope.images_files=/no/images.parquet", "images_files=/no/images.parquet: no such file"),
    ],
)
def test_run_py_refuses_a_bad_value_in_one_line_before_the_model_loads(override, message, tmp_path):
    answers = tmp_path / "results" / "tiny"
    result = run_py(f"results_dir={tmp_path / 'results'}", *override.split(), f"+x={tmp_path}", timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and not answers.exists()


def test_overwrite_no_keeps_the_answer_cache(finished):
    _, overrides, _ = finished
    cache = run_directory(compose(*overrides)) / ".answers.jsonl"
    assert cache.exists()
    assert run_py(*overrides, "overwrite=no", timeout=60).returncode == 2
    assert cache.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            "~suite.tasks.pope +suite.tasks.popee={fixture:pope,metric:pope_accuracy,scale:100}",
            "'popee' is not an lmms-eval task",
        ),
        ("suite.tasks.pope.metric=pope_f2", "metric='pope_f2' is not one of its metrics (pope_accuracy"),
    ],
)
def test_task_and_metric_names_are_checked_before_the_model_loads(change, message, tmp_path):
    result = run_py(
        f"results_dir={tmp_path}",
        "tasks=null",
        *change.split(),
        "suite.tasks.vqav2_val.metric=exact_match",
        f"+x={tmp_path}",
        "model.seed=77",
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]
    assert "Loading weights" not in result.stderr + result.stdout


# -- §3 bad files never crash a tool -----------------------------------------------------------------


def table(*args):
    return subprocess.run(
        [sys.executable, "-m", "gc2bench.cli", "table", *map(str, args)], capture_output=True, text=True, timeout=120
    )


MALFORMED = [
    ("metrics-null", lambda r: {**r, "metrics": None}, "metrics=None is not a mapping"),
    ("no-model", lambda r: {k: v for k, v in r.items() if k != "model"}, "no model name"),
    ("no-compressor", lambda r: {k: v for k, v in r.items() if k != "compressor"}, "no compressor name"),
    (
        "text-score",
        lambda r: {**r, "metrics": {**r["metrics"], "score": "high"}},
        "metrics.score='high' is not a number",
    ),
    ("text-ratio", lambda r: {**r, "ratio": "half"}, "ratio='half' is not a number"),
    ("truncated", None, "not readable JSON (JSONDecodeError)"),
    ("binary", b"\xff\xfe\x00garbage", "not readable JSON (UnicodeDecodeError)"),
]


def test_table_over_malformed_records_prints_the_good_ones_and_names_each_bad_file(finished, tmp_path):
    _, overrides, _ = finished
    good = run_directory(compose(*overrides))
    shutil.copytree(good, tmp_path / "tiny" / good.name)
    text = (good / "pope.json").read_text()
    for name, change, _ in MALFORMED:
        directory = tmp_path / "tiny" / f"globalcom2_r0.5_{name}"
        directory.mkdir(parents=True)
        (directory / ".lock").touch()
        path = directory / "pope.json"
        if change is None:
            path.write_text(text[: len(text) // 2])
        elif isinstance(change, bytes):
            path.write_bytes(change)
        else:
            path.write_text(
                json.dumps(
                    change({**json.loads(text), "compressor": {"name": "globalcom2", "params": {}}, "ratio": 0.5})
                )
            )
    result = table(tmp_path, "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("tiny,none,1,")
    assert len(result.stdout.splitlines()) == 2  # no bad record made a row
    skipped = [line for line in result.stderr.splitlines() if line.startswith("gc2bench table: skipped")]
    assert len(skipped) == len(MALFORMED)
    for name, _, problem in MALFORMED:
        assert any(f"globalcom2_r0.5_{name}/pope.json: {problem}" in line for line in skipped), (name, skipped)


def test_an_unreadable_answer_cache_is_skipped_with_a_warning_and_appends_start_a_new_line(tmp_path):
    from gc2bench.evaluation.answer_cache import AnswerCache

    cache = tmp_path / ".answers.jsonl"
    good = json.dumps({"key": "a", "text": "yes"})
    cache.write_bytes(good.encode() + b"\n\xff\xfe not utf-8\n" + b'{"key": "b", "te')  # cut short by a kill
    answers = AnswerCache(tmp_path)
    assert answers.loaded == 1 and answers.get("a")["text"] == "yes"
    answers.put("c", {"text": "no"})
    reread = AnswerCache(tmp_path)
    assert reread.loaded == 2 and reread.get("c")["text"] == "no"
    assert cache.read_bytes().endswith(b'{"key": "b", "te\n' + json.dumps({"key": "c", "text": "no"}).encode() + b"\n")


def test_bad_answer_cache_and_orphaned_tmp_files_do_not_stop_a_restart(finished, capsys):
    _, overrides, record = finished
    directory = run_directory(compose(*overrides))
    cache = directory / ".answers.jsonl"
    saved = cache.read_bytes()
    try:
        cache.write_bytes(saved + b"\xff\xfe\x00 binary junk")
        (directory / "pope.json.abc123.tmp").write_text('{"half": ')
        (directory / "pope.json").unlink()
        [again] = run(compose(*overrides))
        assert again["status"] == "done" and again["timing"]["answers_from_cache"] == 2
        assert again["metrics"] == record["metrics"]
        err, out = capsys.readouterr()[::-1]
        assert f"warning: answer cache {cache}: 1 unreadable line(s) skipped" in err
        assert "removed pope.json.abc123.tmp: a record write cut short by a kill" in out
        assert not list(directory.glob("*.tmp"))
    finally:
        cache.write_bytes(saved)


# -- §6 stopping and sharing ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_in_one_line_and_the_same_command_resumes(signal_name, code, tmp_path, cache_dir):
    import signal

    command = [
        sys.executable,
        "run.py",
        f"results_dir={tmp_path}",
        "compressor=globalcom2",
        "hydra.run.dir=/tmp/gc2bench-test-hydra",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    for line in process.stdout:
        if "task 2/2 vqav2_val …" in line:
            break
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped ({signal_name}): finished tasks are recorded in {tmp_path}")
    assert last.endswith("the same command resumes")
    directory = next(tmp_path.glob("tiny/globalcom2_*"))
    assert read_record(directory / "pope.json")["status"] == "done" and not (directory / "vqav2_val.json").exists()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert again.returncode == 0 and "skip pope: record exists" in again.stdout
    assert read_record(directory / "vqav2_val.json")["status"] == "done"


def test_sweeps_sharing_a_sweep_dir_each_count_their_own_job_reports(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from gc2bench.sweep import SWEEP_ID_ENV, SWEEP_SIZE_ENV, SweepJob, SweepProgress

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    for sweep, status in (("sweep-a", "done"), ("sweep-b", "failed")):  # the same job of two concurrent sweeps
        monkeypatch.setenv(SWEEP_ID_ENV, sweep)
        SweepJob(0, 1, str(tmp_path / "0"), ["compressor=none"]).report(status, None if status == "done" else "x")
    monkeypatch.setenv(SWEEP_ID_ENV, "sweep-a")
    monkeypatch.setenv(SWEEP_SIZE_ENV, "1")
    SweepProgress.on_multirun_end(SweepProgress(), config)  # sweep a: done, no exit
    assert "sweep: 1 runs: 1 ran, 0 already done, 0 failed" in capsys.readouterr().out
    monkeypatch.setenv(SWEEP_ID_ENV, "sweep-b")
    with pytest.raises(SystemExit):
        SweepProgress.on_multirun_end(SweepProgress(), config)
    assert "1 failed" in capsys.readouterr().out


def test_an_unwritable_results_dir_is_one_line_naming_it_and_the_errno(tmp_path):
    result = run_py("results_dir=/sys/gc2bench-results", "tasks=[pope]", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write /sys/gc2bench-results") and "(EPERM)" in last


# -- §5 tables and tools that cannot mislead -------------------------------------------------------------


def test_table_splits_models_and_protocols_that_are_not_comparable(tmp_path, finished):
    results, overrides, record = finished
    run(compose(*overrides, "model.seed=1"))
    result = table(results, "--format", "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    models = {line.split(",")[0] for line in lines if not line.startswith("model,")}
    assert {"tiny · model.seed=0", "tiny · model.seed=1"} <= models
    # one task scored with two metrics (entries) by two methods: two columns, never one
    other = {
        **record,
        "compressor": {"name": "globalcom2", "params": {"ratio": 0.5}},
        "ratio": 0.5,
        "metrics": {**record["metrics"], "metric": "pope_f1_score", "score": 12.5},
        "identity": {
            **record["identity"],
            "protocol": {
                **record["identity"]["protocol"],
                "entry": {**record["identity"]["protocol"]["entry"], "metric": "pope_f1_score"},
            },
        },
    }
    mixed = tmp_path / "mixed"
    for name, made in (("none_r1_x", record), ("globalcom2_r0.5_x", other)):
        (mixed / "tiny" / name).mkdir(parents=True)
        (mixed / "tiny" / name / "pope.json").write_text(json.dumps({"format": RECORD_FORMAT, **made}))
    header = table(mixed, "--format", "csv").stdout.splitlines()[0]
    assert set(header.split(",")[3:5]) == {"pope (pope_accuracy)", "pope (pope_f1_score)"}


def test_records_made_alike_are_chosen_by_finish_time_not_directory_order(tmp_path, finished):
    _, _, record = finished
    for parent, finished_at, score in (
        ("a", "2026-01-02T00:00:00+00:00", 40.0),
        ("b", "2026-01-01T00:00:00+00:00", 60.0),
    ):
        made = {
            "format": RECORD_FORMAT,
            **record,
            "timing": {**record["timing"], "finished": finished_at},
            "metrics": {**record["metrics"], "score": score},
        }
        (tmp_path / parent / "tiny" / "none_r1_x").mkdir(parents=True)
        (tmp_path / parent / "tiny" / "none_r1_x" / "pope.json").write_text(json.dumps(made))
    result = table(tmp_path, "--format", "csv")
    assert result.stdout.splitlines()[1].split(",")[3] == "40.0"
    assert "the latest finished (2026-01-02T00:00:00+00:00) is used" in result.stderr


def test_paper_warns_when_the_model_or_the_metric_differs(finished):
    results, _, _ = finished
    paper = REPO / "experiments" / "tcsvt_table1" / "tcsvt_table1_llava_next_7b.csv"
    result = table(results, "--paper", paper, "--model", "tiny")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any(
        "reports llava_next_7b, these records are tiny: Δ paper compares different models" in w for w in warnings
    )
    assert any(
        "POPE is scored as pope_accuracy, the paper as pope_f1_score averaged over category" in w for w in warnings
    )


def test_an_uncached_hub_model_offline_fails_in_seconds_and_later_runs_at_once(tmp_path):
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "hub"))  # nothing answers there
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "model=llava_next_7b",
            "compressor=none,globalcom2",
            "suite.limit=1",
            "~suite.tasks",
            "+suite.tasks={pope:{metric:pope_accuracy}}",  # hub data: not offline
            f"results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/s",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert time.monotonic() - started < 120
    assert result.returncode == 1 and "Retrying" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: [run")]
    assert len(errors) == 2, result.stderr[-3000:]
    assert errors[0].startswith(
        "error: [run 1/2] model.path=llava-hf/llava-v1.6-vicuna-7b-hf: not in the local hub "
        "cache and http://127.0.0.1:9 cannot be reached (this machine looks offline)"
    )
    assert "pass model.path=/local/checkpoint" in errors[0]
    assert errors[1].endswith("(as found for an earlier run of this process)")


# -- the checkpoint fingerprint ---------------------------------------------------------------------------


def test_a_hub_checkpoint_is_identified_by_its_snapshot_commit_and_files(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from gc2bench.results.identity import FINGERPRINT_SPAN, checkpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--owner--model"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text('{"a": 1}')
    weights = snapshot / "model.safetensors"
    weights.write_bytes(bytes(3 * FINGERPRINT_SPAN))
    found = checkpoint("owner/model")
    assert (found["hub_id"], found["revision"], found["dir"]) == ("owner/model", "0123abcd", str(snapshot.resolve()))
    assert checkpoint("owner/other") == {"dir": None, "hub_id": "owner/other", "revision": None, "fingerprint": None}
    copied = tmp_path / "copy"
    shutil.copytree(snapshot, copied)  # new file times, same files: the same checkpoint
    assert checkpoint(str(copied))["fingerprint"] == found["fingerprint"]
    with open(copied / "model.safetensors", "r+b") as file:
        file.seek(3 * FINGERPRINT_SPAN - 1)
        file.write(b"\x01")  # the last MiB changed
    assert checkpoint(str(copied))["fingerprint"] != found["fingerprint"]
    (snapshot / "config.json").write_text('{"a": 2}')
    assert checkpoint("owner/model")["fingerprint"] != found["fingerprint"]


def test_a_truncated_image_decoded_by_datasets_raises_while_answering(cache_dir):
    """Hub data (images decoded by ``datasets``): lmms-eval's LOAD_TRUNCATED_IMAGES is off while answering."""
    import datasets
    import lmms_eval.api.task  # noqa: F401  sets PIL's LOAD_TRUNCATED_IMAGES = True
    import pyarrow.parquet as pq
    from PIL import ImageFile

    from gc2bench.evaluation.fixtures import build_fixture
    from gc2bench.evaluation.images import strict_decoding

    image = pq.read_table(build_fixture("pope")).column("image").to_pylist()[1]
    rows = datasets.Dataset.from_dict(
        {"image": [{"bytes": image["bytes"][: len(image["bytes"]) // 2], "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    assert ImageFile.LOAD_TRUNCATED_IMAGES and rows[0]["image"].size  # what lmms-eval alone would score
    with pytest.raises(OSError, match="truncated"), strict_decoding():
        rows[0]  # the row access in GC2BenchLMM._answer decodes it
    assert ImageFile.LOAD_TRUNCATED_IMAGES


def test_a_failed_or_skipped_attempt_never_replaces_a_done_record(finished, capsys):
    from gc2bench.run import _write_failed, _write_skipped

    _, overrides, _ = finished
    directory = run_directory(compose(*overrides))
    before = read_record(record_path(directory, "pope"))
    assert before["status"] == "done"
    try:
        raise RuntimeError("model.path=llava-hf/x: not on this machine")
    except RuntimeError as error:
        _write_failed(directory, {"task": "pope"}, error, {}, {})
    _write_skipped(directory, {"task": "pope"}, "no API key", {}, {})
    assert read_record(record_path(directory, "pope")) == before
    assert capsys.readouterr().out.count("kept the done record") == 2


def test_an_unwritable_answer_cache_stops_the_run_not_a_sample(tmp_path):
    from gc2bench.evaluation.answer_cache import AnswerCache, CacheWriteError

    (tmp_path / "file").write_text("")
    cache = AnswerCache(tmp_path / "file")  # a file where the run directory should be
    with pytest.raises(CacheWriteError) as raised:
        cache.put("k", {"answer": "yes"})
    assert "answer cache" in str(raised.value) and raised.value.errno
