"""One run, top to bottom: validate, build the compressor, skip finished tasks, load the
model, evaluate each task through lmms-eval, write one record per task, print a summary.

``run_job`` is what ``run.py`` calls for every Hydra job (one run, or one run of a ``-m``
sweep). A task that raises gets a ``status: failed`` record and the run goes on with its
other tasks; the job then fails (a sweep runs its other jobs and exits 1 at the end). A
restarted run skips tasks whose record is done, retries failed ones, and serves the answers
a killed attempt already generated from the run directory's answer cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gc2bench.config import build_compressor, build_model, suite_tasks, validate
from gc2bench.errors import ConfigError, Gc2benchError, RunFailed, report
from gc2bench.evaluation.answer_cache import AnswerCache, CacheWriteError, CachingAdapter
from gc2bench.results.identity import (
    checkpoint,
    directory_protocol,
    incomplete,
    mismatch,
    record_identity,
    run_identity,
    task_protocol,
)
from gc2bench.results.records import (
    environment,
    git_commit,
    package_versions,
    params_digest,
    read_record,
    record_path,
    remove_orphaned_tmp,
    run_dir,
    run_lock,
    write_record,
)
from gc2bench.sweep import SweepJob, claim_gpu, sweep_name


class NoSampleScored(Gc2benchError):
    """A task of which no sample was scored (all failed, or none was read): failed, never done."""

    def __init__(self, failures: list[dict]):
        first = f"; first: doc {failures[0].get('doc_id')}: {failures[0].get('error')}" if failures else ""
        super().__init__(f"no sample was scored ({len(failures)} failed{first})")
        self.failures = failures


# -- one Hydra job ------------------------------------------------------------------------------


def run_job(cfg: DictConfig) -> str:
    """Run ``cfg`` as one Hydra job; returns ``done``, ``skipped`` (all done before) or ``failed``.

    Errors print one line (unexpected ones their traceback too). Outside a sweep they exit
    (2: bad config or model, 1: a task failed) or propagate. Inside a sweep the job returns
    ``failed`` so the other jobs run; ``SweepProgress`` then fails the sweep at its end.
    """
    job = SweepJob.current()
    claim_gpu()
    status, error = "failed", None
    stop_on_sigterm()
    try:
        status = "done" if run(cfg, label=job.label) else "skipped"
    except KeyboardInterrupt as stop:
        error = "stopped"
        code = stop.code if isinstance(stop, Stopped) else 130
        where = f" in {CURRENT_RUN['directory']}" if CURRENT_RUN.get("directory") else ""
        print(
            f"\nstopped ({'SIGTERM' if code == 143 else 'SIGINT'}): finished tasks are recorded{where}, answers "
            f"already made are kept; the same command resumes",
            file=sys.stderr,
            flush=True,
        )
        job.report(status, error)
        sys.exit(code)  # ends a sweep too: a stop is for the whole command
    except OSError as failure:
        if failure.errno not in WRITE_ERRNOS:
            raise
        error = f"cannot write {failure.filename or 'results'}: {failure.strerror} ({errno.errorcode[failure.errno]})"
        print(
            f"error: {job.label + ' ' if job.label else ''}{error}; nothing finished is lost",
            file=sys.stderr,
            flush=True,
        )
        if not job.in_sweep:
            sys.exit(1)
    except Gc2benchError as failure:
        error = str(failure)
        exit_status = report(failure, job.label)
        if not job.in_sweep:
            sys.exit(exit_status)
    except Exception as failure:
        error = f"{type(failure).__name__}: {failure}"
        if not job.in_sweep:
            raise
        traceback.print_exc()
    finally:
        job.report(status, error)
    return status


WRITE_ERRNOS = {errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EPERM}
CURRENT_RUN: dict = {}  # the run directory being worked on, for the line a stop prints


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the process is (like SIGINT's KeyboardInterrupt); ``code`` is 143."""

    def __init__(self, code: int = 143):
        super().__init__(code)
        self.code = code


def stop_on_sigterm() -> None:
    """SIGTERM stops a run as Ctrl-C does (records, answer cache and lock stay consistent), unless
    something else (a launcher) already handles SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):

        def stop(signum, frame):
            raise Stopped(128 + signum)

        signal.signal(signal.SIGTERM, stop)


# -- one run ------------------------------------------------------------------------------------


def run(cfg: DictConfig, label: str = "") -> list[dict]:
    """Evaluate ``cfg``'s model × compressor on the suite's tasks that have no done record.

    Returns the records written (done, or skipped with a reason such as a missing API key);
    raises ``RunFailed`` after the last task if any failed.
    """
    from gc2bench.evaluation.progress import quiet_lmms_eval_logging
    from gc2bench.evaluation.suite import check_suite
    from gc2bench.results.tracking import check_tracking

    quiet_lmms_eval_logging()
    validate(cfg)
    check_suite(cfg)
    check_tracking(cfg)
    entries = suite_entries(cfg)
    compressor = build_compressor(cfg)
    params = compressor.params()
    identity = run_identity(cfg)
    directory = run_dir(
        cfg.results_dir,
        cfg.model.name,
        compressor.name,
        params,
        model=identity["model"],
        protocol=directory_protocol(cfg),
    )
    rank, world_size = data_parallel_rank()
    head = " ".join(filter(None, [label, f"{cfg.model.name} · {compressor.name} r={params.get('ratio', 1.0):g}"]))
    if rank == 0:  # under torchrun, one header per run
        print(f"{head} → {directory}", flush=True)
    CURRENT_RUN["directory"] = directory
    _note_legacy_records(cfg, compressor, directory)
    with run_lock(directory) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            for orphan in remove_orphaned_tmp(directory):
                print(f"removed {orphan.name}: a record write cut short by a kill", flush=True)
        todo = [entry for entry in entries if cfg.overwrite or not _done(directory, entry, cfg, identity)]
        if not todo:
            return []
        if cfg.overwrite and rank == 0:
            AnswerCache.clear(directory)
        return _evaluate(cfg, compressor, directory, todo, head, rank, world_size)


def _evaluate(cfg, compressor, directory: Path, todo: list[dict], head: str, rank: int, world_size: int):
    from gc2bench.evaluation.suite import (
        TaskSkipped,
        check_task,
        data_description,
        evaluate_task,
        skip_reason,
        summarize,
        use_offline_hub,
    )
    from gc2bench.results.tracking import start_tracking

    params = compressor.params()
    common = {
        "compressor": {"name": compressor.name, "params": params},
        "ratio": params.get("ratio", 1.0),
        "suite": cfg.suite.name,
        "protocol": protocol_name(cfg),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    identity = run_identity(cfg)
    model = {
        "name": cfg.model.name,
        "path": cfg.model.get("path"),
        "revision": cfg.model.get("revision"),
        "pipeline": cfg.model.get("pipeline", "transformers"),
        "checkpoint": identity["checkpoint"],
    }
    records, failed = [], []
    for entry in list(todo):
        reason = skip_reason(entry)
        if reason:
            todo.remove(entry)
            print(f"skip {entry['task']}: {reason}", flush=True)
            if rank == 0:
                records.append(
                    _write_skipped(
                        directory,
                        entry,
                        reason,
                        {**common, "model": model, "environment": environment()},
                        _identity(cfg, identity, entry),
                    )
                )
    if not todo:
        return records
    for entry in todo:  # names checked before the model loads
        check_task(entry)
    if all(entry.get("fixture") or entry.get("data_files") for entry in todo):
        use_offline_hub()
    from gc2bench.evaluation.lmms_model import GC2BenchLMM

    if world_size > 1:
        _init_data_parallel()
    started = time.perf_counter()
    try:
        adapter = build_model(cfg, compressor)
    except Exception as error:
        for entry in todo if rank == 0 else []:
            _write_failed(
                directory,
                entry,
                error,
                {**common, "model": model, "environment": environment()},
                _identity(cfg, identity, entry),
            )
        raise
    load_s = time.perf_counter() - started
    identity = run_identity(cfg, loaded_checkpoint(adapter))
    if not cfg.overwrite:  # a checkpoint first found by loading it (downloaded, built) may match a record
        found = [entry for entry in todo if _done(directory, entry, cfg, identity, quiet=True)]
        for entry in found:
            print(
                f"skip {entry['task']}: record exists in {directory}, made from the checkpoint just loaded", flush=True
            )
        todo = [entry for entry in todo if entry not in found]
        if not todo:
            return records
    model = {
        **adapter.describe(),
        "resolved_revision": getattr(adapter.model.config, "_commit_hash", None),
        "checkpoint": identity["checkpoint"],
    }
    if adapter.pruner is not None:  # an LLMStageCompressor: it has schedule_info
        common["compressor"]["schedule"] = compressor.schedule_info(len(adapter.pruner.layers))
    common.update(model=model, environment=environment())
    cache = AnswerCache(directory, rank, world_size)
    if cache.loaded:
        print(f"{head}: {cache.loaded} answers cached by an earlier attempt are reused", flush=True)
    scope = {
        "model": {k: v for k, v in model.items() if k != "device"},
        "compressor": common["compressor"],
        "identity": {"model": identity["model"], "fingerprint": identity["checkpoint"]["fingerprint"]},
    }
    lm = GC2BenchLMM(
        CachingAdapter(adapter, cache, scope), batch_size=cfg.suite.batch_size, protocol=cfg.suite.get("protocol")
    )
    tracker = start_tracking(cfg, name=directory.name, group=sweep_name())
    try:
        for index, entry in enumerate(todo, 1):
            task_head = f"{head} · task {index}/{len(todo)} {entry['task']}"
            if rank == 0:
                print(f"{task_head} …", flush=True)
            started_at, hits = _now(), cache.hits
            started = time.perf_counter()
            outputs = directory / "outputs" / entry["task"]  # submission files some tasks write
            outputs.mkdir(parents=True, exist_ok=True)
            try:
                result = evaluate_task(lm, entry, limit=cfg.suite.limit, seed=cfg.seed, output_dir=outputs)
                if result is not None and not result.samples:
                    raise NoSampleScored(result.failures)
            except TaskSkipped as skipped:
                print(f"{task_head}: skipped: {skipped.reason}", flush=True)
                if rank == 0:
                    records.append(
                        _write_skipped(directory, entry, skipped.reason, common, _identity(cfg, identity, entry))
                    )
                continue
            except CacheWriteError:
                raise
            except Exception as error:
                print(f"{task_head}: failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                if rank == 0:
                    failures = {"failures": error.failures} if isinstance(error, NoSampleScored) else {}
                    failed.append(
                        _write_failed(directory, entry, error, {**common, **failures}, _identity(cfg, identity, entry))
                    )
                continue
            finally:
                with contextlib.suppress(OSError):
                    outputs.rmdir()
                    outputs.parent.rmdir()
            if result is None or rank != 0:  # a data-parallel rank other than 0: rank 0 writes the record
                continue
            tokens, efficiency = summarize(result.samples, result.failures, result.wall_s)
            record = {
                **common,
                "task": entry["task"],
                "entry": entry,
                "limit": cfg.suite.limit,
                "data": data_description(entry),
                "metrics": result.metrics,
                "tokens": tokens,
                "efficiency": efficiency,
                "failures": result.failures,
                "samples": result.samples,
                "prompting": lm.prompting.get(entry["task"]),
                "status": "done",
                "identity": _identity(cfg, identity, entry),
                "timing": {
                    "started": started_at,
                    "finished": _now(),
                    "wall_s": time.perf_counter() - started,
                    "model_load_s": load_s,
                    "answers_from_cache": cache.hits - hits,
                },
            }
            record.update(tracker.info())
            path = write_record(record_path(directory, entry["task"]), record)
            records.append(record)
            tracker.log_record(record)
            score = result.metrics.get("score")
            reused = f", {cache.hits - hits} answers from the cache" if cache.hits > hits else ""
            print(
                f"{task_head}: {result.metrics['metric']} {'–' if score is None else f'{score:.2f}'} "
                f"({efficiency['samples']} samples, {record['timing']['wall_s']:.1f} s{reused}) → {path}",
                flush=True,
            )
    finally:
        tracker.finish(failed=bool(failed))
    if any(record["status"] == "done" for record in records):
        print_summary([record for record in records if record["status"] == "done"])
    if failed:
        names = ", ".join(f"{r['task']} ({r['error']})" for r in failed)
        raise RunFailed(
            f"{len(failed)} of {len(todo)} tasks failed in {directory}: {names}; "
            f"their records say why, and running again retries them"
        )
    return records


def _done(directory: Path, entry: dict, cfg: DictConfig, identity: dict, quiet: bool = False) -> bool:
    """Whether ``entry``'s task has a done, complete record made by ``identity`` with this run's
    protocol (suite entry, suite keys, seed); says why not (unless ``quiet``)."""
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    record = read_record(record_path(directory, entry["task"]))
    if record is None or record.get("status") != "done":
        return False
    reason = incomplete(record) or mismatch(record, identity, task_protocol(cfg, entry))
    if reason:
        say(f"redo {entry['task']}: {reason}")
        return False
    say(f"skip {entry['task']}: record exists in {directory} (overwrite=true to redo)")
    return True


def _identity(cfg: DictConfig, identity: dict, entry: dict) -> dict:
    return record_identity(identity, task_protocol(cfg, entry))


def loaded_checkpoint(adapter) -> dict:
    """``checkpoint`` of a loaded adapter (its resolved path; the loaded config's commit for a hub id)."""
    found = checkpoint(adapter.path, adapter.revision)
    if found["hub_id"] and not found["revision"]:
        found["revision"] = getattr(adapter.model.config, "_commit_hash", None)
    return found


def _note_legacy_records(cfg: DictConfig, compressor, directory: Path) -> None:
    """Say once when an older gc2bench's directory for this run (keyed by the compressor alone) holds
    records: they do not say which model made them and are not reused."""
    params = compressor.params()
    legacy = (
        Path(cfg.results_dir)
        / cfg.model.name
        / f"{compressor.name}_r{params.get('ratio', 1.0):g}_{params_digest(params)}"
    )
    if legacy != directory and legacy.is_dir() and any(legacy.glob("*.json")):
        print(
            f"note: {legacy} holds records of an older gc2bench that do not say which model and checkpoint made "
            f"them; they are not reused (this run writes {directory})",
            flush=True,
        )


def run_directory(cfg: DictConfig) -> Path | None:
    """Where ``cfg``'s records go, or None when the config cannot say yet (invalid, or it needs the
    Hydra job's context, e.g. ``results_dir=${hydra:runtime.output_dir}``). Loads no model."""
    from gc2bench.evaluation.suite import check_suite

    try:
        validate(cfg)
        check_suite(cfg)
        compressor = build_compressor(cfg)
        return run_dir(
            cfg.results_dir,
            cfg.model.name,
            compressor.name,
            compressor.params(),
            model=run_identity(cfg)["model"],
            protocol=directory_protocol(cfg),
        )
    except Exception:
        return None


def run_is_finished(cfg: DictConfig) -> bool:
    """Whether running ``cfg`` would do nothing: every task has a done record. Never with
    ``overwrite=true``; not when the config cannot be read here (its job reports the error). A
    task recorded as skipped (no API key) is not finished: the job may see a key this process does
    not (``hydra.job.env_set``, SLURM setup lines) and exits at once if it does not."""
    directory = run_directory(cfg)
    try:
        if directory is None or cfg.overwrite:
            return False
        identity = run_identity(cfg)
        return all(_done(directory, entry, cfg, identity, quiet=True) for entry in suite_entries(cfg))
    except Exception:
        return False


def _write_unless_done(directory: Path, record: dict) -> None:
    """Write a failed / skipped ``record`` unless a done record is there: a later attempt that fails (its
    checkpoint missing on this machine, say) never replaces finished numbers."""
    path = record_path(directory, record["task"])
    existing = read_record(path)
    if isinstance(existing, dict) and existing.get("status") == "done":
        print(f"kept the done record {path}; this attempt is not recorded over it ({record['status']})", flush=True)
        return
    write_record(path, record)


def _write_unfinished(directory: Path, entry: dict, common: dict, identity: dict, status: str, **why) -> dict:
    """The ``failed`` or ``skipped`` record of ``entry``'s task (``why``: its error or reason), written unless done."""
    record = {
        **common,
        "task": entry["task"],
        "identity": identity,
        "metrics": None,
        "tokens": None,
        "efficiency": None,
        "status": status,
        **why,
        "timing": {"finished": _now()},
    }
    _write_unless_done(directory, record)
    return record


def _write_failed(directory: Path, entry: dict, error: BaseException, common: dict, identity: dict) -> dict:
    why = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}
    return _write_unfinished(directory, entry, common, identity, "failed", **why)


def _write_skipped(directory: Path, entry: dict, reason: str, common: dict, identity: dict) -> dict:
    return _write_unfinished(directory, entry, common, identity, "skipped", reason=reason)


def protocol_name(cfg: DictConfig) -> str:
    """The run's evaluation protocol (``suite.protocol``; gc2bench.prompting)."""
    from gc2bench.prompting import get_protocol

    return get_protocol(cfg.suite.get("protocol")).name


def suite_entries(cfg: DictConfig) -> list[dict]:
    """The suite's task entries, or the ones ``tasks`` names (in the suite's order), with this run's
    compressor's ``task_overrides`` applied (``row_task_overrides``)."""
    entries = row_task_overrides(cfg, suite_tasks(cfg.suite))
    wanted = cfg.get("tasks")
    if not wanted:
        return entries
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    names = [entry["task"] for entry in entries]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ConfigError(f"tasks={unknown} are not in suite={cfg.suite.name} (its tasks: {', '.join(names)})")
    return [entry for entry in entries if entry["task"] in wanted]


def row_task_overrides(cfg: DictConfig, entries: list[dict]) -> list[dict]:
    """``entries`` with ``task_overrides[<compressor name>][<task>]`` merged into each task's entry: one
    experiment runs each of its rows under the protocol its paper used for that row (e.g. AAAI Table 1's
    TextVQA with OCR tokens for the baseline and GlobalCom², without for FastV and FasterVLM). The merged
    entry is what the record stores (``entry``) and what a restart compares."""
    overrides = cfg.get("task_overrides") or {}
    mine = overrides.get(cfg.compressor.get("name")) or {}
    names = [entry["task"] for entry in entries]
    unknown = [task for task in mine if task not in names]
    if unknown:
        raise ConfigError(f"task_overrides.{cfg.compressor.name}: tasks {unknown} are not in suite={cfg.suite.name}")
    mine = OmegaConf.to_container(mine, resolve=True) if isinstance(mine, DictConfig) else mine
    return [{**entry, **(mine.get(entry["task"]) or {})} for entry in entries]


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of a torchrun / accelerate launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_data_parallel() -> None:
    """Under torchrun: this rank's GPU is ``LOCAL_RANK`` and the process group is up (NCCL on GPUs,
    gloo on CPUs) before lmms-eval shards the documents and gathers the answers."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def print_summary(records: list[dict]) -> None:
    """One aligned row per done task: metric, score, visual tokens before → kept, median prefill ms."""
    rows = [("task", "metric", "score", "visual tokens before → kept", "prefill ms")]
    for r in records:
        before, kept = r["tokens"]["visual_tokens_before"], r["tokens"]["visual_tokens_kept"]
        prefill = r["efficiency"]["prefill_ms"]
        score = r["metrics"]["score"]
        tokens = f"{before['mean']:.1f} → {kept['mean']:.1f}" if before and kept else "–"
        averaged = r["tokens"].get("layer_averaged_image_tokens")
        if averaged:
            tokens += f" (layer avg {averaged['mean']:.1f})"
        rows.append(
            (
                r["task"],
                r["metrics"]["metric"],
                "–" if score is None else f"{score:.2f}",
                tokens,
                "–" if not prefill else f"{prefill['median']:.2f}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  "
            f"{row[4]:>{widths[4]}}"
        )
    failed = sum(r["efficiency"]["failed_samples"] for r in records)
    if failed:
        print(f"{failed} sample(s) failed; see `failures` in the records")
