"""gc2bench entry point: `python run.py compressor=globalcom2 ratio=0.1` (Hydra overrides; `-m` sweeps)."""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from gc2bench.run import run_job

    run_job(cfg)


if __name__ == "__main__":
    main()
