"""``mpiscore score --dry-run``: will the job work, how long will it take, what to ask for.

Rank 0's first scoring process runs every check of the real job (so a dry run
fails as the job would, same line, same exit code) and then times a few real
batches (scoring/calibrate.py) without taking the job's locks or writing
anything; estimate.py scales what it measured to the allocation. An entry
script's init() and run() are called as in the job, with its output and log
directories in a scratch directory removed afterwards.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

from .config import JobConfig, ScorerSettings
from .estimate import DryRun, Estimate, estimate
from .rank.pool import ScorerPool, start_pool
from .rank.world import as_world
from .tuning import DRY_RUN_SECONDS


def dry_run(config: JobConfig, comm: object | None = None, pool: ScorerPool | None = None,
            ranks: int | None = None, seconds: float = DRY_RUN_SECONDS
            ) -> tuple[DryRun, Estimate]:
    """Check the job and estimate it for ``ranks`` (default: the ranks of ``comm``) x
    the layout's scoring processes per rank; every rank gets the answer, or raises
    the error the job would end with."""
    world = as_world(comm)
    pool = pool or start_pool(config, world)

    def calibrated() -> tuple[DryRun, Estimate]:
        assert pool is not None
        with tempfile.TemporaryDirectory(prefix="mpiscore-dry-run-") as scratch:
            pool.prepare(config, seconds, _scratch_settings(pool.settings, scratch))
            dry = pool.dry_run_done()
        return dry, estimate(dry, ranks or world.size, pool.size,
                             pool.settings.intra_op_threads)

    try:
        return world.from_rank_zero(calibrated, "the dry run")
    finally:
        pool.close()
        pool.reap()


def _scratch_settings(settings: ScorerSettings, scratch: str) -> ScorerSettings:
    """An entry script's output and log directories in ``scratch``: a dry run writes
    nothing of the job's."""
    if settings.script is None:
        return settings
    return replace(settings, script=replace(settings.script, output_dir=scratch,
                                            log_dir=scratch))
