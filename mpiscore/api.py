"""``run(config, comm=None)``: the one place that wires plan, schedule, read, score, write, report.

Rank 0's first scoring process prepares the job (every check happens there,
before scoring) and rank 0 broadcasts it or the error. Every rank starts its
scoring processes; rank 0 runs the coordinator and its own worker in one
loop, the other ranks run theirs. At the end all ranks finish the output together: complete (and
renamed), or left partial with its journal for ``--resume``. Errors raise on
the rank that saw them; deciding to abort the MPI job is left to the entry
point (cli.py), as mpi4py.run does.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .config import JobConfig
from .errors import (
    Interrupted,
    ModelError,
    MpiscoreError,
    ScoringError,
    error_class,
    storage_error,
)
from .faults import FaultPlan
from .io.fill import write_fills
from .io.registry import OutputTarget
from .job import Job
from .journal import Journal, changed_input, journal_token
from .model import model_digest, read_model
from .placement import slurm_ids, visible_gpu, window_for
from .plan import Batch
from .progress import Activity, Progress, progress_mode
from .rank.coordinator import wire_rank_zero
from .rank.pool import ScorerPool, start_pool
from .rank.run_dir import PlanFile, create_run_dir, record_run
from .rank.signals import StopSignals
from .rank.status import StatusFile
from .rank.watchdog import Watchdog
from .rank.worker import RankWorker, work
from .rank.world import WorkerLink, World, as_world
from .report import (
    LOG,
    RankStats,
    RunReport,
    early_stderr,
    log_start,
    plural,
    start_logging,
    stop_early_stderr,
    stop_logging,
)
from .schedule import FailurePolicy, Scheduler
from .tuning import OVERDUE_MARGIN_SECONDS
from .wire import ScorerSpec


def run(config: JobConfig, comm: object | None = None, pool: ScorerPool | None = None
        ) -> RunReport:
    """Score the job on every rank of ``comm`` (or in this process alone); the job's report.

    ``comm``: an mpi4py communicator, a ``rank.world.World``, or None for this
    process alone.

    ``pool``: scoring processes this rank started earlier with ``pool.start_pool``
    (the CLI starts them before its heavy imports, so their start-up overlaps); by
    default started here.

    Raises ``Interrupted`` after a graceful stop on SIGTERM/SIGINT and
    ``ScoringError`` when the error budget ran out; in both cases the output
    stays partial and ``--resume`` finishes it.
    """
    started = time.perf_counter()
    world = as_world(comm)
    rank, size = world.rank, world.size
    early_stderr(rank, size, world.hostname(), config.quiet)  # rank 0 says what it does
    pool = pool or start_pool(config, world)
    pool.preopen(config)  # while rank 0's first process prepares the job (once: the CLI may have)
    job, warming = None, None
    try:
        warming = _warm_output(config, rank)
        job, model, whole = _broadcast_job(config, world, pool, started)
        host = world.hostname()
        where = f"rank {rank} of {size} ({host})"
        stop_early_stderr()
        handlers = start_logging(config.resolved_run_dir, rank, size, host, rank == 0,
                                 config.log_level, config.quiet)
        try:
            if rank == 0:
                _log_plan(job)
            spec = ScorerSpec(job, model, pool.settings, where, FaultPlan.parse(config.faults),
                              records_death=True)
            asking = None
            if whole is None:  # ask now: rank 0 answers while this rank's processes start
                asking = _worker(job.config, pool, world, spec, world.worker_link())
                asking.start()
            pool.start(spec, lambda: asking is not None and asking.stop_heard())
            if warming is not None:  # before the loop, whose CPU is the rank's waiting
                warming.join()
            return _score(job, whole, pool, world, started, asking)
        finally:
            stop_logging(handlers)
    finally:
        if warming is not None:  # an import still running when the process leaves crashes it
            warming.join()
        stop_early_stderr()
        if job is not None and rank == 0:
            job.lock.release()
        pool.close()
        pool.reap()


def _warm_output(config: JobConfig, rank: int) -> threading.Thread | None:
    """Import what finishing the output needs (OutputTarget.warm) while the ranks wait
    for rank 0's first scoring process to prepare the job: started after the job
    came, that import (h5py, ~40 ms of CPU) held back rank 0's first hand-out, and
    so every rank's first batch, while the scoring processes sat ready. An output
    the options cannot name is reported by the preparation."""
    try:
        target = OutputTarget.of(config)
    except MpiscoreError:
        return None
    return target.warm(rank)


def _log_plan(job: Job) -> None:
    plan, item = job.plan, job.item
    files = "" if item == "file" else f", {plural(len(plan.files), 'file')}"
    LOG.info("planned %s of <= %s %ss (%s%s); %s %s; starting the scoring sessions",
             plural(plan.batch_count, "batch", "batches"), f"{plan.batch_rows:,}", item,
             plural(plan.total_rows, item), files,
             "reopened" if job.config.resume else "created", job.target.partial)
    for warning in job.warnings:
        LOG.warning("%s", warning)


class Whole(NamedTuple):
    """What rank 0 alone holds: the job with every batch of its plan, the batches an
    interrupted run wrote, and the thread writing ``plan.json``."""

    job: Job
    done: set[int]
    plan_file: PlanFile


def _broadcast_job(config: JobConfig, world: World, pool: ScorerPool, started: float
                   ) -> tuple[Job, bytes, Whole | None]:
    """Rank 0 prepares the job (in its first scoring process) and reads the model;
    every rank gets the job as ranks share it (the plan's files, not its batches:
    Job.shared) and the model, or raises rank 0's error; rank 0 also the Whole.
    ``started``: when the run started (``time.perf_counter``)."""
    whole: list[Whole] = []

    def prepare() -> tuple[Job, bytes]:
        if pool.preparing is None:  # else the CLI asked already, and said so
            log_start(config, world.size, pool.size)
        pool.prepare(config)
        model = read_model(config.scorer_file, config.scorer_kind)  # as the process prepares
        job, done = pool.prepared()
        try:
            _check_same_model(job, model)
            started_at = time.time() - (time.perf_counter() - started)
            whole.append(Whole(job, done, create_run_dir(job, started_at)))
        except BaseException:
            job.lock.release()
            raise
        return job.shared(), model

    shared, model = world.from_rank_zero(prepare, "setting up the job")
    return shared, model, whole[0] if whole else None


def _check_same_model(job: Job, model: bytes) -> None:
    if model_digest(model) != job.model_sha256:
        raise ModelError(f"{job.model_name}: the model file changed while the job started; "
                         "start it again")


def _worker(config: JobConfig, pool: ScorerPool, world: World, spec: ScorerSpec,
            link: WorkerLink) -> RankWorker:
    """This rank's worker, feeding ``pool`` with what it asks for over ``link``."""
    return RankWorker(pool, link, window_for(config, pool.size), world.rank, spec.faults,
                      config.stop_grace, deepens=not config.window)


def _score(job: Job, whole: Whole | None, pool: ScorerPool, world: World, started: float,
           asking: RankWorker | None) -> RunReport:
    """Score, finish the output and report; ``job`` is every rank's (Job.shared),
    ``whole`` rank 0's alone; ``asking``: the other ranks' worker, which asked for its
    first batches before its processes were ready (so rank 0 need not look for that
    request while they start, and its answer is there when they are)."""
    config = job.config
    spec = pool.spec
    assert spec is not None
    ready = time.perf_counter()
    LOG.info("scoring: %s on this rank, %s each; %s of <= %s %ss in all",
             plural(pool.size, "scoring process", "scoring processes"),
             plural(spec.settings.intra_op_threads, "intra-op thread"),
             plural(job.plan.batch_count, "batch", "batches"), f"{job.plan.batch_rows:,}",
             job.item)

    scheduler = None
    loop_started, loop_cpu = time.perf_counter(), time.process_time()
    with StopSignals(spec.where) as signals:
        if whole is not None:
            scheduler, own = _coordinate(
                whole, world, lambda link: _worker(config, pool, world, spec, link),
                signals.requested)
        else:
            assert asking is not None
            own = asking
            work(own, signals.requested)
    loop = (time.perf_counter() - loop_started, time.process_time() - loop_cpu)
    pool.close()
    status = world.broadcast(_status(scheduler) if world.rank == 0 else "")
    finish_error = _finish_output(job, scheduler, world, status)
    stats = _rank_stats(own, pool, world, spec, (started, ready), loop)
    every_rank = world.gather((stats, finish_error))  # collective: on every rank, no branch
    report = None
    if whole is not None:
        assert scheduler is not None and every_rank is not None
        errors = [error for _, error in every_rank if error is not None]
        if errors:  # the output could not be finished: it stays partial
            scheduler.halt(errors[0][1], errors[0][0])
            status = _status(scheduler)
        report = _report(whole.job, scheduler, status, [s for s, _ in every_rank], world.size,
                         (started, ready))
    report = world.broadcast(report)
    assert report is not None
    _raise_unless_complete(report)
    return report


def _coordinate(whole: Whole, world: World, worker: Callable[[WorkerLink], RankWorker],
                stop_requested: Callable[[], str | None]) -> tuple[Scheduler, RankWorker]:
    """Rank 0: coordinate every rank, and score with its own processes in the same loop;
    the scheduler as the job ended, and rank 0's own worker."""
    job, done, plan_file = whole
    config = job.config
    policy = FailurePolicy(config.max_retries, config.error_threshold,
                           config.allowed_failed_percent, config.mini_batch_error_threshold,
                           job.item)
    scheduler = Scheduler.for_batches(job.plan.batches, job.plan.total_rows, policy, done)
    if done:
        LOG.info("resuming: %d of %d batches already written", len(done), job.plan.batch_count)
    journal = Journal(config.resolved_run_dir, journal_token(job.fingerprint),
                      job.plan.batch_count, fresh=not config.resume)
    todo = scheduler.pending
    progress = Progress(todo.rows(), len(todo), config.progress_seconds, job.item,
                        progress_mode(config.progress, config.quiet, world.rank),
                        lambda: _activity(scheduler))
    watchdog = Watchdog(scheduler, config.progress_timeout)

    journal_failed = False

    def record(batches: list[Batch]) -> None:
        nonlocal journal_failed
        try:
            journal.record(*(b.batch_id for b in batches))
        except MpiscoreError:
            journal_failed = True
            raise

    def on_complete(batches: list[Batch]) -> None:  # a report's bundle: once for all
        watchdog.completed()
        # a journal that failed takes no more; batches written after another batch's
        # write failed (the job stopping on it) are on disk, and do go in
        if not journal_failed:
            _halting_on(scheduler, lambda: record(batches))
        progress(sum(batch.rows for batch in batches), len(batches))
        status.tick()

    def between_messages() -> str | None:
        _halting_on(scheduler, job.lock.refresh)
        _halting_on(scheduler, plan_file.check)  # plan.json could not be written
        status.tick()  # RUN_DIR/status.json every STATUS_SECONDS: a time check
        progress.tick()
        return stop_requested() or watchdog.check()

    rank_zero = wire_rank_zero(scheduler, world, worker, on_complete)
    status = StatusFile(config.resolved_run_dir, scheduler, progress, rank_zero.coordinator.heard,
                        world.size, job.plan.total_rows, job.plan.batch_count)
    status.write("running")
    try:
        rank_zero.serve(between_messages, config.stop_grace + OVERDUE_MARGIN_SECONDS)
    finally:
        progress.close()
        _halting_on(scheduler, journal.close)
        _halting_on(scheduler, plan_file.wait)  # complete before the job ends
        status.write(_status(scheduler))  # summary.json has the last word
    if scheduler.stop_reason is None and (change := changed_input(job.plan.files)):
        scheduler.halt(change, "InputChanged")
    if scheduler.stop_reason is None:
        _halting_on(scheduler, job.lock.confirm)
    return scheduler, rank_zero.worker


def _activity(scheduler: Scheduler) -> Activity:
    """Failures, retries and busy ranks so far, for the progress bar."""
    tries = sum(len(attempts) for attempts in scheduler.attempts.values())
    return Activity(len(scheduler.failed), tries - len(scheduler.failed),
                    sum(1 for held in scheduler.held.values() if held > 0))


def _halting_on(scheduler: Scheduler, step: Callable[[], None]) -> None:
    """Run a step of rank 0's own (journal, lock); an error of ours stops the job with
    it, so every rank drains and leaves cleanly instead of being aborted."""
    try:
        step()
    except MpiscoreError as exc:
        scheduler.halt(str(exc), type(exc).__name__)


def _status(scheduler: Scheduler | None) -> str:
    assert scheduler is not None
    if scheduler.stop_reason is None:
        return "complete"
    return "failed" if scheduler.stop_error is not None else "stopped"


def _finish_output(job: Job, scheduler: Scheduler | None, world: World, status: str
                   ) -> tuple[str, str] | None:
    """Fill the rows of failed batches (rank 0), then finish the output on every rank.

    Returns the error (class name, message) that kept this rank from finishing it,
    for rank 0 to report, instead of raising between collectives."""
    if not job.target.finisher(world.rank):
        world.barrier()  # the finish's: rank 0's writer does the rest
        return None
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    failure = None
    try:
        if scheduler is not None and status == "complete" and scheduler.failed:
            write_fills(writer, job.source, list(scheduler.failed.values()), job.outputs,
                        job.kept)
    except MpiscoreError as exc:
        failure = exc
    writer.close()
    try:  # collective: every rank takes part, even one that failed above
        writer.finish(world, complete=status == "complete" and failure is None)
    except MpiscoreError as exc:
        failure = failure or exc
    except OSError as exc:
        failure = failure or storage_error(job.target.partial, exc, "cannot finish the output")
    return None if failure is None else (type(failure).__name__, str(failure))


def _rank_stats(worker: RankWorker, pool: ScorerPool, world: World, spec: ScorerSpec,
                times: tuple[float, float], loop: tuple[float, float]) -> RankStats:
    """This rank's share; ``times``: when the run started and when scoring could."""
    s = worker.stats
    own = resource.getrusage(resource.RUSAGE_SELF)
    started, ready = times
    return RankStats(
        rank=world.rank, host=world.hostname(), batches=s.batches, rows=s.rows,
        failures=s.failures, read_seconds=s.read, score_seconds=s.score,
        write_seconds=s.write, driver_cpu_seconds=own.ru_utime + own.ru_stime,
        scorer_cpu_seconds=pool.cpu_seconds, scorer_peak_rss_mib=pool.peak_rss_mib,
        loop_seconds=loop[0], loop_cpu_seconds=loop[1], startup_seconds=ready - started,
        first_batch_seconds=None if s.first_batch_done is None else s.first_batch_done - started,
        scorer_restarts=pool.restarts, intra_op_threads=spec.settings.intra_op_threads,
        gpu=visible_gpu(spec.settings.device_id), preopened_sessions=pool.preopened,
        scoring_depth=pool.depth, run_rows=tuple(pool.run_rows),
        shutdown_errors=tuple(pool.shutdown_errors))


def _report(job: Job, scheduler: Scheduler, status: str, stats: list[RankStats],
            size: int, times: tuple[float, float]) -> RunReport:
    """The job's summary, written to the run directory (rank 0; run_dir.record_run)."""
    started, ready = times
    wall = time.perf_counter() - started
    # a script's items without a result (append_row, fewer results) count as failed
    rows = sum(s.rows for s in stats) - sum(scheduler.short.values())
    failed = _failures(job, scheduler)
    output = job.target.final if status == "complete" else job.target.partial
    report, written = record_run(job.config.resolved_run_dir, RunReport(
        status=status, stop_reason=scheduler.stop_reason, error=scheduler.stop_error,
        first_failure=_first_failure(failed),
        output=str(output), run_dir=str(job.config.resolved_run_dir),
        rows=job.plan.total_rows, rows_scored=rows, batches=job.plan.batch_count,
        batches_done=len(scheduler.completed), batches_failed=len(scheduler.failed),
        rows_failed=scheduler.failed_rows, ranks=size,
        wall_seconds=wall, setup_seconds=ready - started, rows_per_second=rows / wall,
        per_rank=stats, slurm=slurm_ids()), failed)
    if not written:
        return report
    in_output = sum(b.rows for b in job.plan.batches if b.batch_id in scheduler.completed)
    earlier = in_output - rows
    item = job.item
    LOG.info("%s: %s scored by this run in %.2fs on %s (%s %ss/s); %s holds %s of %s "
             "batches, %s of %s %ss%s, %s failed", status, plural(rows, item), wall,
             plural(size, "rank"), f"{rows / wall:,.0f}", item, output,
             f"{len(scheduler.completed):,}", f"{job.plan.batch_count:,}",
             f"{in_output:,}", f"{job.plan.total_rows:,}", item,
             f" ({earlier:,} from an earlier run)" if earlier > 0 else "",
             plural(scheduler.failed_rows, item))
    return report


def _failures(job: Job, scheduler: Scheduler) -> list[dict[str, Any]]:
    """failed_batches.json, in batch order: each batch given up, with every try; and each
    batch whose script returned fewer results than items (append_row), with how many."""
    given_up = [{"batch_id": b.batch_id, **_where(job, b), "error": attempts[-1].error,
                 "attempts": [vars(a) for a in attempts]}
                for b in scheduler.failed.values()
                if (attempts := scheduler.attempts[b.batch_id])]
    short = []
    for batch_id, missing in scheduler.short.items():
        batch = job.plan.batches[batch_id]
        returned = batch.rows - missing
        short.append({"batch_id": batch_id, **_where(job, batch), "items_failed": missing,
                      "error": f"batch {batch_id}: {job.model_name} returned {returned} "
                               f"result{'s' * (returned != 1)} for {plural(batch.rows, job.item)}",
                      "attempts": []})
    return sorted([*given_up, *short], key=lambda entry: entry["batch_id"])

def _first_failure(failed: list[dict[str, Any]]) -> str | None:
    """The first failure's error, naming its batch where it does not (a timeout, a
    scoring process that died: the rank says those, not the batch's own error)."""
    if not failed:
        return None
    batch, error = failed[0]["batch_id"], str(failed[0]["error"])
    return error if error.startswith(f"batch {batch} ") or error.startswith(f"batch {batch}:") \
        else f"batch {batch}: {error}"


def _where(job: Job, batch: Batch) -> dict[str, Any]:
    """Where a batch's items are, for failed_batches.json: its file and rows, or (file
    input) its files."""
    if job.item == "file":
        files = job.plan.files[batch.file_index:batch.file_index + batch.rows]
        return {"files": [f.path for f in files], "rows": [batch.global_start, batch.global_stop]}
    return {"file": job.plan.files[batch.file_index].path, "file_rows": [batch.start, batch.stop],
            "rows": [batch.global_start, batch.global_stop]}


def _raise_unless_complete(report: RunReport) -> None:
    """The error the job ends with, if it did not complete, or if an entry script's
    shutdown() failed (the rows are all written, but what shutdown() was to do is not)."""
    shutdowns = [error for stats in report.per_rank for error in stats.shutdown_errors]
    if report.status == "complete" and shutdowns:
        more = f" (and {len(shutdowns) - 1} more)" if len(shutdowns) > 1 else ""
        raise ModelError(f"{shutdowns[0]}{more}; every batch was scored and {report.output} "
                         "is complete, but what shutdown() does is not done: fix it, then "
                         "score again with --overwrite", collective=True)
    if report.status == "stopped":
        raise Interrupted(f"stopped ({report.stop_reason}); {report.batches_done} of "
                          f"{report.batches} batches written to {report.output}; rerun with "
                          "--resume (resume=True) to finish", collective=True)
    if report.status != "failed":
        return
    if report.error == "ScoringError":
        raise ScoringError(f"{report.stop_reason}; first failure: {report.first_failure}; "
                           f"output left partial ({report.output}), details in "
                           f"{report.run_dir}/failed_batches.json", collective=True)
    raise error_class(report.error or "")(report.stop_reason or "failed", collective=True)
