"""Checks on the composed config that run before anything expensive is loaded."""

from __future__ import annotations

import math
from pathlib import Path


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


def validate_ratio(value) -> float:
    """``ratio`` as a float in (0, 1], or a ConfigError naming the bad value."""
    valid = "ratio must be a number with 0 < ratio <= 1 (the share of visual tokens kept)"
    if isinstance(value, bool):
        raise ConfigError(f"ratio={value} is not a number; {valid}")
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"ratio={value} is not a number; {valid}") from None
    if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
        raise ConfigError(f"ratio={value} is out of range; {valid}")
    return ratio


def check_choice(value, allowed, option: str, method: str):
    """``value`` if it is one of ``allowed``, else a ValueError ``method: option=value is not one of ...``."""
    if value not in allowed:
        raise ValueError(f"{method}: {option}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def check_model_path(path: str) -> None:
    """A path that looks local (not ``owner/name``) must be an existing directory."""
    path = str(path)
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise ConfigError(f"model.path={path}: no such directory (give a local checkpoint directory or a hub id "
                          f"like llava-hf/llava-v1.6-vicuna-7b-hf)")


def validate(cfg) -> None:
    validate_ratio(cfg.ratio)
    if cfg.model.get("path"):
        check_model_path(cfg.model.path)
    if not cfg.suite.get("tasks"):
        raise ConfigError(f"suite={cfg.suite.get('name')} has no tasks")
    for entry in cfg.suite.tasks:
        for key in ("task", "metric"):
            if not entry.get(key):
                raise ConfigError(f"suite={cfg.suite.get('name')}: every task needs `{key}` (got {dict(entry)})")
