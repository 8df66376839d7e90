"""Which records can share a table: those made by the same model identity (every model key and the
checkpoint's fingerprint) under the same suite protocol (suite keys and seed); within a table, one
column per task and suite entry (another metric or prompt is another column).

Groups of one model name are labelled by what sets them apart (``tiny · model.seed=1``), so
unrelated experiments under one results directory are shown side by side, never mixed.
"""

from __future__ import annotations

import json

from gc2bench.results.benchmarks import benchmark_of, display_name

LEGACY = "identity=unknown (older gc2bench)"


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def comparability(record: dict) -> dict:
    """The flat fields that must agree for two records to share a table."""
    identity = record.get("identity")
    if not isinstance(identity, dict):
        return {"identity": LEGACY}
    protocol = identity.get("protocol") or {}
    fields = _flat({"model": identity.get("model"), "suite": protocol.get("suite"), "seed": protocol.get("seed")})
    fields.pop("model.device", None)  # where it ran, not what it is
    fields["checkpoint"] = json.dumps((identity.get("checkpoint") or {}).get("fingerprint"))
    return fields


def _label(name: str, fields: dict, varying: list) -> str:
    if not varying:
        return name
    shown = [f"{key}={json.loads(fields[key]) if key in fields else None}" for key in varying
             if key != "checkpoint"] or [f"checkpoint={json.loads(fields.get('checkpoint', 'null'))}"]
    return f"{name} · {', '.join(shown)}"


# Suite-entry keys a table row may set on its own (an experiment's task_overrides: the papers ran TextVQA with
# OCR tokens for some rows only); the table notes them per row instead of splitting the column.
ROW_PROTOCOL_KEYS = ("ocr_tokens",)


def _entry(record: dict):
    identity = record.get("identity")
    entry = (identity.get("protocol") or {}).get("entry") if isinstance(identity, dict) else record.get("entry")
    if isinstance(entry, dict):
        entry = {key: value for key, value in entry.items() if key not in ROW_PROTOCOL_KEYS}
    return json.dumps(entry, sort_keys=True, default=str)


def _columns(records: list) -> list:
    """``records`` with ``task`` renamed where one task was scored with several suite entries."""
    entries: dict = {}
    for record in records:
        entries.setdefault(record["task"], {}).setdefault(_entry(record), len(entries.get(record["task"], {})))
    renamed = []
    for record in records:
        by_entry = entries[record["task"]]
        if len(by_entry) > 1:
            metric = (record.get("metrics") or {}).get("metric")
            metrics = {json.loads(e).get("metric") if json.loads(e) else None for e in by_entry}
            suffix = metric if len(metrics) == len(by_entry) else f"entry {by_entry[_entry(record)] + 1}"
            record = {**record, "task": f"{record['task']} ({suffix})"}
        renamed.append(record)
    return renamed


def comparable_groups(records: list) -> dict:
    """``{table label: records}``: one group per model name × comparability."""
    by_name: dict = {}
    for record in records:
        fields = comparability(record)
        key = json.dumps(fields, sort_keys=True)
        by_name.setdefault(record["model"]["name"], {}).setdefault(key, (fields, []))[1].append(record)
    groups = {}
    for name, by_key in by_name.items():
        all_keys = sorted({key for fields, _ in by_key.values() for key in fields})
        varying = [key for key in all_keys if len({fields.get(key) for fields, _ in by_key.values()}) > 1]
        for key in sorted(by_key):
            fields, members = by_key[key]
            groups[_label(name, fields, varying)] = _columns(members)
    return groups


# -- --paper: what the published table measured ------------------------------------------------------

PAPER_SUITE = "paper10"  # the suite whose entries score as the papers do


def _paper_metrics() -> dict:
    """``{benchmark: (metric, average_over)}`` of the paper suite's entries."""
    from omegaconf import OmegaConf

    from gc2bench.config import CONF_DIR, suite_tasks

    suite = OmegaConf.load(CONF_DIR / "suite" / f"{PAPER_SUITE}.yaml")
    return {benchmark_of(entry["task"]): (entry["metric"], entry.get("average_over")) for entry in suite_tasks(suite)
            if benchmark_of(entry["task"])}


def paper_warnings(table, paper) -> list:
    """Why comparing ``table`` with the published ``paper`` table may mislead: another model (the
    paper file names one of conf/model), or a benchmark scored with another metric than the paper's."""
    from gc2bench.config import config_names

    warnings = []
    name = table.model.split(" · ")[0]
    stem = paper.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    paper_models = [model for model in config_names("model") if stem.endswith(f"_{model}") or f"_{model}_" in stem]
    if paper_models and name not in paper_models:
        warnings.append(f"{table.model}: --paper {paper.path} reports {paper_models[0]}, these records are {name}: "
                        "Δ paper compares different models")
    expected = _paper_metrics()
    for task in paper.shared_tasks(table):
        benchmark = benchmark_of(task)
        if benchmark not in expected:
            continue
        used = set()
        for row in table.rows:
            record = row.records.get(task)
            if record is not None:
                entry = ((record.get("identity") or {}).get("protocol") or {}).get("entry") or record.get("entry") or {}
                metric = entry.get("metric") or (record.get("metrics") or {}).get("metric")
                if metric:
                    used.add((metric, entry.get("average_over")))
        for metric, average_over in sorted(used - {expected[benchmark]}, key=str):
            paper_metric, paper_average = expected[benchmark]
            ours = metric + (f" averaged over {average_over}" if average_over else "")
            theirs = paper_metric + (f" averaged over {paper_average}" if paper_average else "")
            warnings.append(f"{table.model}: {display_name(task)} is scored as {ours}, the paper as {theirs} "
                            f"(suite={PAPER_SUITE}): Δ paper compares different metrics")
    return warnings
