"""gc2bench entry point: `python run.py compressor=globalcom2 ratio=0.1` (Hydra overrides)."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from gc2bench.config import ConfigError
    from gc2bench.models.adapter import ModelLoadError
    from gc2bench.run import run

    try:
        run(cfg)
    except (ConfigError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
