"""A run's config: composed from conf/ (``compose_run_config``), its values checked before anything expensive
is loaded (``validate``), its compressor and model instantiated (``build_compressor``, ``build_model``)."""

from __future__ import annotations

import math
from pathlib import Path

from gc2bench.errors import ConfigError, Gc2benchError

# conf/ of the checkout, shipped in the package as gc2bench/conf (a link to ../conf in the source tree).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def config_names(group: str) -> list[str]:
    """The configs of a config group, e.g. ``config_names("compressor")``."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def compose_run_config(overrides: list[str], check: bool = True, return_hydra_config: bool = False):
    """conf/config.yaml composed with Hydra ``overrides`` (a ConfigError names a bad override), its
    ``compressor_options`` applied and, with ``check``, validated; what ``run.py`` gets, for tools that build
    a run's compressor and model (``return_hydra_config``: with the ``hydra`` node, e.g. a sweep's params)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not CONF_DIR.is_dir():
        raise ConfigError(f"gc2bench config directory {CONF_DIR} not found (a broken install: reinstall gc2bench)")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split("Config search path")[0].split())) from None
    apply_compressor_options(cfg, overrides)
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
    """``value`` if it is one of ``allowed``, else a ConfigError ``method: option=value is not one of ...``."""
    if value not in allowed:
        raise ConfigError(f"{method}: {option}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def check_model_path(path: str) -> None:
    """A path that looks local (not ``owner/name``) must be an existing directory."""
    path = str(path)
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists() or path.count("/") != 1
    if looks_local and not Path(path).expanduser().is_dir():
        raise ConfigError(
            f"model.path={path}: no such directory (give a local checkpoint directory or a hub id "
            f"like llava-hf/llava-v1.6-vicuna-7b-hf)"
        )


def check_integer(value, key: str, minimum: int | None = None, allow_none: bool = False) -> None:
    """``value`` is an int (not a bool, a float or text) of at least ``minimum``, else a ConfigError naming ``key``."""
    if value is None and allow_none:
        return
    wanted = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not an integer; {key} must be {wanted}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} is out of range; {key} must be {wanted}")


def check_bool(value, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not true or false")


def check_device(device) -> None:
    """``model.device`` names a device this machine has (checked without loading a model)."""
    if device in (None, "auto"):
        return
    import torch

    try:
        kind = torch.device(str(device)).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"model.device={device!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"model.device={device}: CUDA is not available on this machine (use model.device=cpu or auto)"
        )
    if kind == "cuda" and ":" in str(device) and int(str(device).split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"model.device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device={device}: MPS is not available on this machine")


def validate(cfg) -> None:
    validate_ratio(cfg.ratio)
    check_integer(cfg.get("seed"), "seed", minimum=0)
    check_bool(cfg.get("overwrite", False), "overwrite")
    if cfg.model.get("path"):
        check_model_path(cfg.model.path)
    if "device" in cfg.model:
        check_device(cfg.model.device)
    if "seed" in cfg.model:
        check_integer(cfg.model.seed, "model.seed", minimum=0)
    check_integer(cfg.suite.get("limit"), "suite.limit", minimum=1, allow_none=True)
    check_integer(cfg.suite.get("batch_size", 1), "suite.batch_size", minimum=1)
    pipeline = cfg.model.get("pipeline", "transformers")
    if pipeline not in ("transformers", "llava"):  # gc2bench.layout.PIPELINES
        raise ConfigError(
            f"model.pipeline={pipeline}: expected transformers (llava-hf's processor and packing) or "
            "llava (the original LLaVA code's AnyRes rules)"
        )
    entries = suite_tasks(cfg.suite)
    if not entries:
        raise ConfigError(f"suite={cfg.suite.get('name')} has no tasks")
    for entry in entries:
        if not entry.get("metric"):
            raise ConfigError(f"suite={cfg.suite.get('name')}: every task needs `metric` (got {entry})")


def _instantiate(node, **kwargs):
    """``hydra.utils.instantiate`` whose config and load errors surface as one clear error, not a wrapper."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, Gc2benchError):
            raise cause from None
        if isinstance(cause, ValueError):  # a component rejected its options
            raise ConfigError(str(cause)) from cause
        raise


def build_compressor(cfg):
    """The compressor of ``cfg.compressor`` (its ``_target_`` class with the config's options)."""
    apply_compressor_options(cfg)
    return _instantiate(cfg.compressor)


def build_model(cfg, compressor):
    """The model adapter of ``cfg.model`` around ``compressor``."""
    return _instantiate(cfg.model, compressor=compressor, _convert_="all")


def apply_compressor_options(cfg, overrides: list[str] | None = None):
    """``cfg`` with ``compressor_options[<compressor name>]`` merged into ``cfg.compressor``, in place (so the
    compressor, its record's config and its run directory all see them): how an experiment sweeping several
    methods sets one method's option, e.g. ``{pdrop: {layers: [2, 8, 16]}}``. Idempotent. A ConfigError names
    an unknown compressor or option, and an option also set as ``compressor.<option>`` to another value (on the
    command line: ``overrides``, else the Hydra job's; or by an experiment): never a silent choice."""
    options = cfg.get("compressor_options") or {}
    unknown = [name for name in options if name not in config_names("compressor")]
    if unknown:
        raise ConfigError(
            f"compressor_options.{unknown[0]}: no such compressor (conf/compressor: "
            f"{', '.join(config_names('compressor'))})"
        )
    name = cfg.compressor.get("name")
    mine = options.get(name) or {}
    if not mine:
        return cfg
    from omegaconf import OmegaConf

    own_yaml = CONF_DIR / "compressor" / f"{name}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(own_yaml), resolve=False) if own_yaml.is_file() else {}
    on_command_line = _compressor_overrides(_job_overrides(cfg) if overrides is None else overrides)
    for option, value in mine.items():
        if option not in cfg.compressor or option in ("_target_", "name"):
            raise ConfigError(
                f"compressor_options.{name}.{option}: {name} has no option {option} (its options: "
                f"{', '.join(k for k in cfg.compressor if k not in ('_target_', 'name'))})"
            )
        current, default = cfg.compressor[option], defaults.get(option)
        if current == value:
            continue
        if option in on_command_line or (current != default and not str(default).startswith("${")):
            raise ConfigError(
                f"compressor.{option}={current} and compressor_options.{name}.{option}={value} are both "
                f"set; set it once (on the command line: compressor_options.{name}.{option}=...)"
            )
        cfg.compressor[option] = value
    return cfg


def _compressor_overrides(overrides) -> set[str]:
    """The options that ``compressor.<option>=...`` overrides set (with Hydra's ``+``, ``++`` or ``~``)."""
    keys = (str(override).lstrip("+~").split("=", 1)[0] for override in overrides)
    return {key.split(".")[1] for key in keys if key.startswith("compressor.")}


def _job_overrides(cfg) -> list[str]:
    """The command-line overrides of ``cfg``'s Hydra job (a sweep's job config, or the running job's)."""
    if "hydra" in cfg:
        return list(cfg.hydra.overrides.task)
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def suite_tasks(suite) -> list[dict]:
    """A suite's task entries in its order, resolved, each with its ``task``: ``suite.tasks`` maps an
    lmms-eval task name to its entry (``{textvqa_val: {metric: exact_match, ocr_tokens: false}}``), so an
    override names the task it sets (``suite.tasks.textvqa_val.ocr_tokens=true``). ``suite``: a suite config."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    name, tasks = suite.get("name"), suite.get("tasks")
    if isinstance(tasks, (DictConfig, ListConfig)):
        tasks = OmegaConf.to_container(tasks, resolve=True)
    if not tasks:
        return []
    if not isinstance(tasks, dict):
        raise ConfigError(
            f"suite={name}: tasks must map each task name to its entry, e.g. "
            f"{{pope: {{metric: pope_f1_score}}}} (got {tasks!r})"
        )
    entries = []
    for task, entry in tasks.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"suite={name} task {task}: its entry must be a mapping of keys (got {entry!r})")
        if entry.get("task", task) != task:
            raise ConfigError(f"suite={name} task {task}: its entry names another task ({entry['task']!r})")
        entries.append({"task": task, **{key: value for key, value in entry.items() if key != "task"}})
    return entries
