"""Golden prompt files: the exact prompt each protocol sends for the paper's ten tasks.

For every task of ``conf/suite/paper10_fixtures.yaml`` and every protocol, the first two fixture
documents go through lmms-eval's own request building (``build_all_requests``) and the adapter's
rendering and tokenisation (``render``, ``model_inputs``: what ``generate`` runs) with the tiny
LLaVA-NeXT; each file holds the context, rendered prompt, input ids and ``generate`` kwargs.
tests/test_protocols.py fails when any of them changes. Regenerate after a deliberate change:

    python -m gc2bench.evaluation.golden --write

(``--check``, the default, only compares.) Files: tests/golden/prompts/<protocol>/<task>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from gc2bench.prompting import PROTOCOLS

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "tests" / "golden" / "prompts"
SUITE = "paper10_fixtures"
DOCUMENTS = 2
REGENERATE = "python -m gc2bench.evaluation.golden --write"


def suite_entries() -> list[dict]:
    from omegaconf import OmegaConf

    from gc2bench.config import CONF_DIR, suite_tasks

    return suite_tasks(OmegaConf.load(CONF_DIR / "suite" / f"{SUITE}.yaml"))


@contextlib.contextmanager
def _importable_judge_code():
    """lmms-eval's MM-Vet module wants an API key at import; none is used (nothing is scored here)."""
    previous = os.environ.get("OPENAI_API_KEY")
    os.environ.setdefault("OPENAI_API_KEY", "placeholder-never-sent")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OPENAI_API_KEY", None)


def task_prompts(adapter, entry: dict, protocol: str, documents: int = DOCUMENTS) -> dict:
    """The golden content of one task under ``protocol``: per document its context, prompt, ids, kwargs."""
    from gc2bench.evaluation.suite import load_task, use_offline_hub
    from gc2bench.models.adapter import to_rgb
    from gc2bench.prompting import get_protocol

    use_offline_hub()
    with _importable_judge_code():
        task = load_task(entry, protocol)
    task.build_all_requests(limit=documents)
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    rows = []
    for instance in sorted(task.instances, key=lambda inst: inst.args[3]):
        context, task_kwargs, doc_to_visual, doc_id, name, _split = instance.args
        images = [[to_rgb(image) for image in doc_to_visual(docs[doc_id]) or []]]
        prompts, add_bos = adapter.render([context], images, protocol)
        ids = adapter.model_inputs(prompts, images, add_bos=add_bos)["input_ids"][0].tolist()
        chosen = get_protocol(protocol)
        gen_kwargs, until = chosen.generate_kwargs(name, task_kwargs)
        rows.append(
            {
                "doc_id": doc_id,
                "context": context,
                "images": len(images[0]),
                "prompt": prompts[0],
                "input_ids": ids,
                "generate_kwargs": chosen.bind(gen_kwargs, adapter.tokenizer),
                "stop_strings": until,
            }
        )
    return {
        "task": entry["task"],
        "protocol": protocol,
        "model": "tiny (gc2bench.models.tiny)",
        "regenerate": REGENERATE,
        "documents": rows,
    }


def golden_path(protocol: str, task: str) -> Path:
    return GOLDEN_DIR / protocol / f"{task}.json"


def tiny_adapter():
    from gc2bench.compressors.none import NoCompression
    from gc2bench.models.tiny import load_tiny_llava_next

    return load_tiny_llava_next(NoCompression(), dtype="float32", device="cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gc2bench.evaluation.golden", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the golden files (default: compare)")
    args = parser.parse_args(argv)
    adapter = tiny_adapter()
    changed = []
    for protocol in PROTOCOLS:
        for entry in suite_entries():
            content = task_prompts(adapter, entry, protocol)
            path = golden_path(protocol, entry["task"])
            text = json.dumps(content, indent=1, ensure_ascii=False) + "\n"
            if not path.exists() or path.read_text() != text:
                changed.append(path)
                if args.write:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    verb = "rewrote" if args.write else "differ"
    for path in changed:
        print(f"{verb}: {path}")
    print(
        f"{len(changed)} of {len(PROTOCOLS) * len(suite_entries())} golden prompt files {verb}"
        if changed
        else "golden prompt files are up to date"
    )
    return 0 if args.write or not changed else 1


if __name__ == "__main__":
    sys.exit(main())
