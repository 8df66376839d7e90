"""Checks on the composed config that run before anything expensive is loaded."""

from __future__ import annotations

import math
from pathlib import Path


# conf/ of the checkout, shipped in the package as gc2bench/conf (a link to ../conf in the source tree).
CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


def config_names(group: str) -> list[str]:
    """The configs of a config group, e.g. ``config_names("compressor")``."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def compose_run_config(overrides: list[str], check: bool = True):
    """conf/config.yaml composed with Hydra ``overrides`` (a ConfigError names a bad override) and, with
    ``check``, validated; what ``run.py`` gets, for tools that build a run's compressor and model."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not CONF_DIR.is_dir():
        raise ConfigError(f"gc2bench config directory {CONF_DIR} not found (a broken install: reinstall gc2bench)")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split("Config search path")[0].split())) from None
    if check:
        validate(cfg)
    return cfg


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
    pipeline = cfg.model.get("pipeline", "transformers")
    if pipeline not in ("transformers", "llava"):  # gc2bench.layout.PIPELINES
        raise ConfigError(f"model.pipeline={pipeline}: expected transformers (llava-hf's processor and packing) or "
                          "llava (the original LLaVA code's AnyRes rules)")
    if not cfg.suite.get("tasks"):
        raise ConfigError(f"suite={cfg.suite.get('name')} has no tasks")
    for entry in cfg.suite.tasks:
        for key in ("task", "metric"):
            if not entry.get(key):
                raise ConfigError(f"suite={cfg.suite.get('name')}: every task needs `{key}` (got {dict(entry)})")
    from gc2bench.evaluation.protocols import get_protocol

    protocol = get_protocol(cfg.suite.get("protocol"))
    for entry in cfg.suite.tasks:
        protocol.check_task(entry.task)
