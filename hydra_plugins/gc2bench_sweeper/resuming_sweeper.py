"""``hydra/sweeper=gc2bench`` (the default): Hydra's basic sweeper, except that it launches one job per
run directory and none for a run that is already finished (``gc2bench.run.run_is_finished``: every task
has a done record). So a restarted sweep launches only what is left, and the uncompressed baseline of
``compressor=none,globalcom2 ratio=0.5,0.25`` is launched once (with ``overwrite=true`` too). On SLURM
this keeps such runs out of the queue; locally it saves their start-up. Launched runs are numbered
among themselves (``[run 1/4]``); the sweep's closing summary counts the others as already done.
"""

from __future__ import annotations

import os

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


class ResumingSweeper(BasicSweeper):
    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        """The basic sweeper's job batches without finished or repeated runs (called by ``BasicSweeper.sweep``)."""
        from gc2bench import run, sweep

        loader = self.hydra_context.config_loader
        pending: list[list[list[str]]] = []
        finished, repeated, directories = 0, 0, set()
        for batch in BasicSweeper.split_arguments(overrides, max_batch_size):
            kept = []
            for job_overrides in batch:
                job_config = loader.load_sweep_config(self.config, list(job_overrides))
                directory = run.run_directory(job_config)
                if directory is not None and directory in directories:
                    repeated += 1
                elif run.run_is_finished(job_config):
                    finished += 1
                else:
                    kept.append(job_overrides)
                    directories.add(directory)
                    continue
                sweep.NOT_LAUNCHED.append(list(job_overrides))
            if kept:
                pending.append(kept)
        launched = sum(len(batch) for batch in pending)
        if sweep.NOT_LAUNCHED:
            os.environ[sweep.SWEEP_SIZE_ENV] = str(launched)
            reasons = ([f"{finished} runs already finished"] if finished else []) + (
                [f"{repeated} runs writing to an earlier run's record directory"] if repeated else []
            )
            print(f"sweep: {' and '.join(reasons)}, not launched; {launched} to run", flush=True)
        return pending
