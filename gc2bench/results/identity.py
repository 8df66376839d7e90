"""What produced a number: the identity every run directory and record carries.

A run's identity is every key of its ``model`` config (whatever the model group adds: path,
revision, dtype, attn_implementation, the tiny model's seed, a pipeline) plus the checkpoint it
resolves to: the local directory, the hub id and snapshot commit where it comes from the hub
cache, and a fingerprint of the checkpoint's files (names, sizes and a hash of the first and
last MiB of each: milliseconds, not a full hash of 14 GB). A task's protocol is its suite entry,
every suite-level key except ``PROTOCOL_FREE_SUITE_KEYS`` (``limit`` and whatever a suite adds,
e.g. ``protocol``) and the run's ``seed``.

The model config (with the compressor's parameters) names the run directory; the checkpoint and
the protocol are compared against each record before it is reused (``mismatch``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gc2bench.models.hub import hub_snapshot

IDENTITY_FORMAT = 1
# Suite keys that do not change a score: the suite's name, its task list (each entry counts on its
# own) and how many documents are answered per forward pass.
PROTOCOL_FREE_SUITE_KEYS = ("name", "tasks", "batch_size")
FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a file
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".py", ".pt", ".pth", ".tiktoken")


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_config(cfg) -> dict:
    """Every key of ``cfg.model``, resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.model, resolve=True)


def directory_protocol(cfg) -> dict:
    """What besides compressor and model keys a run directory: the suite, its scoring keys and the seed."""
    return {"suite": cfg.suite.get("name"), "suite_keys": suite_protocol(cfg), "seed": cfg.seed}


def suite_protocol(cfg) -> dict:
    """The suite-level keys that change a score (``limit``, a suite's ``protocol``, …), resolved."""
    from omegaconf import OmegaConf

    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    return {key: value for key, value in suite.items() if key not in PROTOCOL_FREE_SUITE_KEYS}


def task_protocol(cfg, entry: dict) -> dict:
    return {"entry": entry, "suite": suite_protocol(cfg), "seed": cfg.seed}


def fingerprint(directory: str | Path) -> str | None:
    """A digest of the checkpoint files in ``directory`` (name, size, first and last MiB of each), or
    None when there are none. File times are left out: a copied checkpoint is the same checkpoint."""
    directory = Path(directory)
    files = sorted(path for path in directory.rglob("*")
                   if path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES)
                   and not any(part.startswith(".") for part in path.relative_to(directory).parts))
    if not files:
        return None
    total = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(FINGERPRINT_SPAN)
            if size > 2 * FINGERPRINT_SPAN:
                handle.seek(size - FINGERPRINT_SPAN)
                head += handle.read(FINGERPRINT_SPAN)
            elif size > FINGERPRINT_SPAN:
                head += handle.read()
        total.update(f"{path.relative_to(directory)}\0{size}\0".encode())
        total.update(hashlib.sha256(head).digest())
    return total.hexdigest()[:16]


def checkpoint(path: str | None, revision: str | None = None) -> dict:
    """Where the checkpoint ``path`` (a local directory or a hub id) is, and its fingerprint.

    ``{"dir", "hub_id", "revision", "fingerprint"}``; ``dir`` and ``fingerprint`` are None while
    a hub checkpoint is not in the local cache (not downloaded yet).
    """
    if path is None:
        return {"dir": None, "hub_id": None, "revision": revision, "fingerprint": None}
    local = Path(str(path)).expanduser()
    hub_id = None
    if not local.is_dir():
        hub_id = str(path)
        local = hub_snapshot(hub_id, revision)
    if local is not None and local.parent.name == "snapshots":
        revision = local.name  # the snapshot's commit
    if local is None or not local.is_dir():
        return {"dir": None, "hub_id": hub_id, "revision": revision, "fingerprint": None}
    return {"dir": str(local.resolve()), "hub_id": hub_id, "revision": revision, "fingerprint": fingerprint(local)}


def config_checkpoint(model: dict) -> dict:
    """``checkpoint`` of a model config: its ``path``, or the directory its loader's ``checkpoint_dir``
    names (the tiny models, before they are built)."""
    if model.get("path"):
        return checkpoint(model["path"], model.get("revision"))
    try:
        from hydra.utils import get_object

        locate = getattr(get_object(model["_target_"]), "checkpoint_dir", None)
    except Exception:
        locate = None
    if locate is None:
        return checkpoint(None, model.get("revision"))
    options = {key: value for key, value in model.items() if not key.startswith("_")}
    return checkpoint(str(locate(**options)))


def run_identity(cfg, loaded_checkpoint: dict | None = None) -> dict:
    """A run's identity: its model config and its checkpoint (found from the config, or the loaded one)."""
    model = model_config(cfg)
    return {"format": IDENTITY_FORMAT, "model": model,
            "checkpoint": loaded_checkpoint if loaded_checkpoint is not None else config_checkpoint(model)}


def record_identity(identity: dict, protocol: dict) -> dict:
    """What a record stores: the run's identity, the task's protocol and a key over both."""
    stored = {**identity, "protocol": protocol}
    return {**stored, "key": digest({k: v for k, v in stored.items() if k != "key"})}


def _first_difference(made, now, prefix: str) -> str:
    if isinstance(made, dict) and isinstance(now, dict):
        for key in sorted(set(made) | set(now), key=str):
            if made.get(key) != now.get(key):
                return _first_difference(made.get(key), now.get(key), f"{prefix}.{key}" if prefix else str(key))
    return f"{prefix}={json.dumps(made, default=str)} (now {json.dumps(now, default=str)})"


def mismatch(record: dict, identity: dict, protocol: dict) -> str | None:
    """Why ``record`` was not made by ``identity`` with ``protocol`` (so it is redone), or None."""
    made = record.get("identity")
    if not isinstance(made, dict) or made.get("format") != IDENTITY_FORMAT:
        return ("its record was written by an older gc2bench and does not say which model and checkpoint made it, "
                "so it is not trusted")
    if made.get("model") != identity["model"]:
        return f"its record was made with {_first_difference(made.get('model'), identity['model'], 'model')}"
    made_protocol, now = made.get("protocol") or {}, protocol
    made_limit, limit = (made_protocol.get("suite") or {}).get("limit"), now["suite"].get("limit")
    if made_limit != limit:
        return f"its record was made with suite.limit={made_limit} (now {limit})"
    if made_protocol != now:
        where = {"entry": "the suite entry", "suite": "suite", "seed": "seed"}
        for key in ("entry", "suite", "seed"):
            if made_protocol.get(key) != now.get(key):
                if key == "entry":
                    return f"its record was made with the suite entry {made_protocol.get(key)} (now {now.get(key)})"
                return f"its record was made with {_first_difference(made_protocol.get(key), now.get(key), where[key])}"
        return f"its record was made with another protocol ({made_protocol} now {now})"
    made_files, files = (made.get("checkpoint") or {}).get("fingerprint"), identity["checkpoint"].get("fingerprint")
    if files is None:
        return "its checkpoint is not on this machine yet, so the record cannot be checked against it"
    if made_files != files:
        where = identity["checkpoint"].get("dir") or identity["checkpoint"].get("hub_id")
        return f"its record was made from other checkpoint files (fingerprint {made_files}, now {files} in {where})"
    return None


INCOMPLETE_KEYS = ("metrics", "tokens", "samples")


def incomplete(record: dict) -> str | None:
    """Why a ``done`` record cannot be trusted as finished (no metrics / tokens / samples), or None."""
    for key in INCOMPLETE_KEYS:
        if not record.get(key):
            return f"its record is marked done but has no {key}"
    if not isinstance(record["metrics"], dict) or "score" not in record["metrics"]:
        return "its record is marked done but its metrics have no score"
    return None
