"""``mpiscore score --dry-run``: will the job work, how long will it take, what to ask for.

Rank 0's first scoring process runs every check of the real job (so a dry run
fails as the job would, same line, same exit code) and then times a few real
batches (scoring/calibrate.py) without taking the job's locks or writing
anything; estimate.py scales what it measured to the allocation. An entry
script's init() and run() are called as in the job, with its output and log
directories in a scratch directory, removed afterwards unless the dry run failed
(its error may send the user to a script's log there).
"""

from __future__ import annotations

import shutil
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
    try:
        found = world.gather(_calibrated(config, pool, seconds))

        def combined() -> tuple[DryRun, Estimate]:
            assert found is not None
            failures = [o for o in found if isinstance(o, BaseException)]
            if failures:  # rank 0's first: the same bad input fails every rank alike
                raise failures[0]
            dry = merge([o for o in found if isinstance(o, DryRun)])
            return dry, estimate(dry, ranks or world.size, pool.size,
                                 pool.settings.intra_op_threads)

        return world.from_rank_zero(combined, "the dry run")
    finally:
        pool.close()
        pool.reap()


def _calibrated(config: JobConfig, pool: ScorerPool, seconds: float
                ) -> DryRun | BaseException:
    """This rank's first scoring process checks the job and times batches, while every
    other rank's does too: so the rate is that of processes sharing the node as the
    job's will, not of one process alone."""
    scratch = tempfile.mkdtemp(prefix="mpiscore-dry-run-")
    try:
        pool.prepare(config, seconds, _scratch_settings(pool.settings, scratch))
        found: DryRun | BaseException = pool.dry_run_done()
    except Exception as exc:  # kept: the error may name a script's log in it
        return exc
    shutil.rmtree(scratch, ignore_errors=True)
    return found


def merge(found: list[DryRun]) -> DryRun:
    """Rank 0's dry run, its calibration that of every rank's together: their rows over
    their time (the rate of one process among them), the longest set-up."""
    first = found[0]
    parts = [dry.calibration for dry in found]
    calibration = replace(
        first.calibration, batches=sum(c.batches for c in parts),
        rows=sum(c.rows for c in parts), read_seconds=sum(c.read_seconds for c in parts),
        score_seconds=sum(c.score_seconds for c in parts),
        setup_seconds=max(c.setup_seconds for c in parts), processes=len(parts))
    return replace(first, calibration=calibration)


def _scratch_settings(settings: ScorerSettings, scratch: str) -> ScorerSettings:
    """An entry script's output and log directories in ``scratch``: a dry run writes
    nothing of the job's."""
    if settings.script is None:
        return settings
    return replace(settings, script=replace(settings.script, output_dir=scratch,
                                            log_dir=scratch))
