"""The Hydra entry point of a run: ``python run.py KEY=VALUE ...`` in a checkout, ``gc2bench run KEY=VALUE ...``
anywhere (the configs ship inside the package as ``gc2bench/conf``; ``-m`` sweeps, ``--help`` as for run.py)."""

import hydra
from omegaconf import DictConfig

from gc2bench.config import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from gc2bench.run import run_job

    run_job(cfg)
