"""Experiment tracking: ``tracking=wandb`` logs each run to Weights & Biases.

One W&B run per gc2bench run (model × compressor with its parameters), named like its run
directory and grouped by sweep: the resolved config, per task the metrics, token accounting
and efficiency figures, a table of per-sample rows, and at the end a table of all tasks.
Off by default (``tracking=none``); ``tracking`` is a config group (conf/tracking/), its options under
``tracking.`` (``tracking.project``, ``tracking.mode``, …). Without network use ``WANDB_MODE=offline`` (or
``tracking.mode=offline``): the run is written to disk and ``wandb sync DIR`` uploads it later.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from gc2bench.config import ConfigError

TRACKERS = ("none", "wandb")
SAMPLE_COLUMNS = ("doc_id", "answer", "target", "visual_tokens_before", "visual_tokens_kept",
                  "layer_averaged_image_tokens", "prefill_ms", "decode_ms")


WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def tracker(cfg: DictConfig) -> str:
    """The tracker the ``tracking`` group chose (``tracking.name``): none or wandb."""
    return str((cfg.get("tracking") or {}).get("name") or "none")


def check_tracking(cfg: DictConfig) -> None:
    """The tracker's settings, before anything loads: ``tracking=wandb`` online needs an API key."""
    tracking = tracker(cfg)
    if tracking not in TRACKERS:
        raise ConfigError(f"tracking={tracking} is not one of {', '.join(TRACKERS)}")
    if tracking != "wandb":
        return
    mode = cfg.tracking.get("mode") or os.environ.get("WANDB_MODE") or "online"
    if mode not in WANDB_MODES:
        raise ConfigError(f"tracking.mode={mode} is not one of online, offline, disabled")
    if mode in ("online", "run") and not _wandb_api_key():
        raise ConfigError("tracking=wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`), or log "
                          "without network with tracking.mode=offline (`wandb sync DIR` uploads it later)")


def _wandb_api_key() -> str | None:
    """An API key as wandb finds it: WANDB_API_KEY, else the netrc entry `wandb login` writes."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return entry[2] if entry else None


def start_tracking(cfg: DictConfig, name: str, group: str | None = None):
    """The tracker ``cfg.tracking`` names, started for one run (on data-parallel rank 0 only: it writes the records)."""
    check_tracking(cfg)
    if tracker(cfg) == "wandb" and int(os.environ.get("RANK", 0)) == 0:
        return WandbTracker(cfg, name, group)
    return NoTracker()


class NoTracker:
    def info(self) -> dict:
        return {}

    def log_record(self, record: dict) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbTracker:
    def __init__(self, cfg: DictConfig, name: str, group: str | None):
        import wandb

        options = cfg.tracking
        self.wandb = wandb
        self.rows: list[list] = []
        self.run = wandb.init(project=options.get("project") or "gc2bench", entity=options.get("entity"),
                              mode=options.get("mode"), dir=options.get("dir") or _hydra_output_dir(),
                              name=name, group=group, job_type=str(cfg.suite.name),
                              tags=[str(cfg.model.name), str(cfg.compressor.name), *(options.get("tags") or [])],
                              config=OmegaConf.to_container(cfg, resolve=True))

    def info(self) -> dict:
        return {"tracking": {"wandb": {"id": self.run.id, "project": self.run.project, "url": self.run.url,
                                       "dir": self.run.dir}}}

    def log_record(self, record: dict) -> None:
        task = record["task"]
        values = {f"{task}/{key}": value for key, value in (record["metrics"] or {}).items()
                  if isinstance(value, (int, float)) and not isinstance(value, bool)}
        for group in ("tokens", "efficiency"):
            for key, value in (record.get(group) or {}).items():
                value = value.get("mean") if isinstance(value, dict) else value
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[f"{task}/{group}/{key}"] = value
        samples = [[_cell(sample.get(column)) for column in SAMPLE_COLUMNS] for sample in record.get("samples") or []]
        values[f"{task}/samples"] = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=samples)
        self.run.log(values)
        self.run.summary.update({key: value for key, value in values.items() if not key.endswith("/samples")})
        tokens = record.get("tokens") or {}
        self.rows.append([task, record["metrics"].get("metric"), record["metrics"].get("score"),
                          _mean(tokens.get("visual_tokens_before")), _mean(tokens.get("visual_tokens_kept")),
                          _mean(tokens.get("layer_averaged_image_tokens")),
                          _mean((record.get("efficiency") or {}).get("prefill_ms"))])

    def finish(self, failed: bool = False) -> None:
        if self.rows:
            columns = ["task", "metric", "score", "visual_tokens_before", "visual_tokens_kept",
                       "layer_averaged_image_tokens", "prefill_ms"]
            self.run.log({"tasks": self.wandb.Table(columns=columns, data=self.rows)})
        self.run.finish(exit_code=1 if failed else 0)


def _mean(stat):
    return stat.get("mean") if isinstance(stat, dict) else None


def _cell(value):
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


def _hydra_output_dir() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
