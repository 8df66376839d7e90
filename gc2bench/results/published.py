"""The protocol each published row was run under, and how a row of records differs from it.

``gc2bench table --paper FILE`` marks (†) every row whose records were not made under the protocol of the
paper row they are compared with, and says how. The protocols below are read from the papers and their
numbers (../shared/papers, ../shared/paper_tables); the evidence for each is in the experiment READMEs
(experiments/<table>/README.md) and docs/methods.md.

A check is (task or None, dotted path into the record, expected value, why); ``None`` applies to every task.
Paths: ``model.pipeline``, ``compressor.name``, ``compressor.params.<key>``, ``entry.<key>`` (the suite entry
the task ran with).
"""

from __future__ import annotations

from pathlib import Path

# A gc2bench method compared with a differently named paper row.
PAPER_METHOD = {"fastervlm_gc2": "fastervlm"}

PIPELINE = (None, "model.pipeline", "llava", "the papers ran the original LLaVA code (model.pipeline=llava)")
NO_OCR = ("textvqa_val", "entry.ocr_tokens", False, "TextVQA without OCR tokens (TCSVT: baseline 61.3)")
OCR = ("textvqa_val", "entry.ocr_tokens", True, "TextVQA with OCR tokens (AAAI: baseline 64.9)")
FASTERVLM_AS_PUBLISHED = (None, "compressor.name", "fastervlm_gc2",
                          "the papers' FasterVLM rows are GlobalCom²'s pipeline with uniform allocation and local "
                          "token scores (compressor=fastervlm_gc2), not FasterVLM's code")
BUDGET_2880 = (None, "compressor.params.budget_of", 2880, "R applied to the fixed 2880 tokens")
LOCAL_SCORES = (None, "compressor.params.token_score", "local",
                "the allocation ablation ran local token scores (its Softmax (sum) row is Table IV's local row)")

FASTV_KEPT = (None, "compressor.params.share", "kept", "FastV keeps R of the tokens from layer K on (share=kept)")
FASTV_STATIC = (None, "compressor.params.decode", "static",
                "FastV selects once at prefill (decode=static: the FastV repo's LLaVA / lmms-eval integration)")
SPARSEVLM_V1 = (None, "compressor.params.version", "v1", "SparseVLM v1 (commit b72c5d6), the only public code then")
SPARSEVLM_V15 = (None, "compressor.params.version", "v1.5", "SparseVLM v1.5 (the authors' HEAD; re-run cells)")
SPARSEVLM_COUNTING = (None, "compressor.params.counting", "authors", "SparseVLM's tokens counted as its authors count")

_TCSVT_MAIN = {"*": [PIPELINE, NO_OCR], "fastervlm": [FASTERVLM_AS_PUBLISHED],
               "fastv": [BUDGET_2880, FASTV_KEPT, FASTV_STATIC],
               "sparsevlm": [BUDGET_2880, SPARSEVLM_V1, SPARSEVLM_COUNTING]}
PUBLISHED = {
    "tcsvt_table1_llava_next_7b": _TCSVT_MAIN,
    "tcsvt_table2_llava_next_13b": _TCSVT_MAIN,
    "aaai_table1_llava_next_7b": {
        "*": [PIPELINE, OCR],
        # Their TextVQA cells are TCSVT Table I's, measured without OCR tokens.
        "fastv": [BUDGET_2880, FASTV_KEPT, FASTV_STATIC, NO_OCR],
        "fastervlm": [FASTERVLM_AS_PUBLISHED, NO_OCR],
        "fastervlm_gc2": [NO_OCR],
        "pdrop": [BUDGET_2880],
        "sparsevlm": [BUDGET_2880, SPARSEVLM_V15, SPARSEVLM_COUNTING],
    },
    "tcsvt_table3_allocation_ablation": {"*": [PIPELINE, NO_OCR], "globalcom2": [LOCAL_SCORES]},
    "tcsvt_table4_token_score_ablation": {"*": [PIPELINE, NO_OCR]},
}


def published_checks(paper_path: str | Path, method: str) -> list:
    """The checks of ``method``'s rows in the paper table at ``paper_path`` (by file name); [] if unknown.
    A row-specific check on a path replaces the table-wide one on the same path and task."""
    table = PUBLISHED.get(Path(paper_path).stem)
    if table is None:
        return []
    specific = table.get(method, [])
    replaced = {(task, path) for task, path, _, _ in specific}
    return [check for check in table.get("*", []) if (check[0], check[1]) not in replaced] + specific


def _lookup(record: dict, path: str):
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _same(value, expected) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(expected)
    return str(value) == str(expected)


def protocol_differences(paper_path: str | Path, method: str, records: dict) -> list[str]:
    """How ``records`` (task → record of one table row) depart from the published protocol of ``method``'s
    row; one line per departure, [] when they follow it (or the paper table is not known)."""
    out = []
    for task, path, expected, why in published_checks(paper_path, method):
        chosen = [records[task]] if task is not None and task in records else (
            [] if task is not None else list(records.values()))
        if path == "entry.ocr_tokens" and task is not None:
            chosen = [r for r in chosen if r.get("entry") is not None]
        found = sorted({repr(_lookup(record, path)) for record in chosen if not _same(_lookup(record, path), expected)})
        if found:
            where = f"{task}: " if task else ""
            out.append(f"{where}{path}={', '.join(found)}, published {expected!r} ({why})")
    return out


def ocr_note(rows: list) -> str | None:
    """'TextVQA OCR tokens: on for …; off for …' over the rows (``table.Row``) that ran TextVQA, or None."""
    on, off = [], []
    for row in rows:
        record = row.records.get("textvqa_val") or row.records.get("textvqa_val_lite")
        entry = (record or {}).get("entry") or {}
        if "ocr_tokens" in entry:
            side = on if entry["ocr_tokens"] else off
            if row.label not in side:
                side.append(row.label)
    if not on and not off:
        return None
    parts = [f"on for {', '.join(on)}" if on else "", f"off for {', '.join(off)}" if off else ""]
    return "TextVQA OCR tokens: " + "; ".join(p for p in parts if p) + "."
