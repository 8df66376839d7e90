"""A hub checkpoint that is neither cached nor reachable fails in seconds, in one line.

Without this, ``from_pretrained`` retries the hub for minutes on an offline machine, and every
run of a sweep does it again. The first failure for a hub id is remembered in the process, so
later runs of that model in the same sweep fail at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from gc2bench.errors import ModelLoadError

PROBE_TIMEOUT_S = 3.0
_UNAVAILABLE: dict = {}


def hub_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The hub cache's snapshot directory of ``hub_id`` at ``revision`` (default main), or None (offline lookup)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_hub_checkpoint(path: str, revision: str | None = None) -> None:
    """Raise ``ModelLoadError`` at once when ``path`` is a hub id that is not in the local hub cache and
    the hub cannot be used (``HF_HUB_OFFLINE``, or its endpoint does not answer)."""
    if Path(str(path)).expanduser().is_dir():
        return
    key = (str(path), revision)
    if key in _UNAVAILABLE:
        raise ModelLoadError(_UNAVAILABLE[key] + " (as found for an earlier run of this process)")
    if hub_snapshot(str(path), revision) is not None:
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        reason = "HF_HUB_OFFLINE is set"
    elif not reachable(hub_endpoint()):
        reason = f"{hub_endpoint()} cannot be reached (this machine looks offline)"
    else:
        return
    _UNAVAILABLE[key] = (
        f"model.path={path}: not in the local hub cache and {reason}; download it where there is "
        f"network (huggingface-cli download {path}) or pass model.path=/local/checkpoint"
    )
    raise ModelLoadError(_UNAVAILABLE[key])
