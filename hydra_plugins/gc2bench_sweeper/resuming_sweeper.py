"""``hydra/sweeper=gc2bench`` (the default): Hydra's basic sweeper, except that a restarted sweep
does not launch runs that are already finished (``gc2bench.run.run_is_finished``: every task has a
done record). On SLURM this keeps finished runs out of the queue; locally it saves their start-up.
Runs that are launched are numbered among themselves (``[run 1/4]``); the sweep's closing summary
counts the others as already done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


class ResumingSweeper(BasicSweeper):
    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        """The basic sweeper's job batches without the finished runs (called by ``BasicSweeper.sweep``)."""
        from gc2bench import run

        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        loader = self.hydra_context.config_loader
        pending: list[list[list[str]]] = []
        for batch in batches:
            kept = []
            for job_overrides in batch:
                job_config = loader.load_sweep_config(self.config, list(job_overrides))
                if run.run_is_finished(job_config):
                    run.NOT_LAUNCHED.append(list(job_overrides))
                else:
                    kept.append(job_overrides)
            if kept:
                pending.append(kept)
        launched = sum(len(batch) for batch in pending)
        if run.NOT_LAUNCHED:
            os.environ[run.SWEEP_SIZE_ENV] = str(launched)
            print(f"sweep: {len(run.NOT_LAUNCHED)} runs already finished, not launched; {launched} to run",
                  flush=True)
        return pending
