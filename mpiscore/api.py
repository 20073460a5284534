"""``run(config, comm=None)``: the one place that wires plan, schedule, read, score, write, report.

Rank 0's first scoring process prepares the job (every check happens there,
before scoring) and rank 0 broadcasts it or the error. Every rank starts its
scoring processes; rank 0 runs the coordinator and its own rank worker in one
loop, the other ranks run theirs. At the end all ranks finish the output together: complete (and
renamed), or left partial with its journal for ``--resume``. Errors raise on
the rank that saw them; deciding to abort the MPI job is left to the entry
point (cli.py), as mpi4py.run does.
"""

from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
from .io.fields import fill_columns
from .io.registry import open_reader
from .job import Job
from .jobfile import write_config
from .journal import FINGERPRINT, Journal, changed_input, journal_token
from .model import model_digest, read_model
from .placement import slurm_ids
from .plan import Batch
from .rank.coordinator import Coordinator, Message, RankWorker, serve, work
from .rank.pool import ScorerPool, ScorerSpec, start_pool
from .rank.signals import StopSignals
from .rank.status import StatusFile
from .rank.world import MpiCoordinatorLink, MpiWorkerLink, broadcast, gather, hostname
from .report import (
    HISTORY,
    LOG,
    Progress,
    RankStats,
    RunReport,
    append_history,
    early_stderr,
    log_start,
    plural,
    start_logging,
    stop_early_stderr,
    stop_logging,
    write_json,
)
from .schedule import FailurePolicy, Scheduler


def run(config: JobConfig, comm: Any | None = None, pool: ScorerPool | None = None
        ) -> RunReport:
    """Score the job on every rank of ``comm`` (or in this process alone); the job's report.

    ``pool``: scoring processes this rank started earlier with ``pool.start_pool``
    (the CLI starts them before its heavy imports, so their start-up overlaps); by
    default started here.

    Raises ``Interrupted`` after a graceful stop on SIGTERM/SIGINT and
    ``ScoringError`` when the error budget ran out; in both cases the output
    stays partial and ``--resume`` finishes it.
    """
    started = time.perf_counter()
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    early_stderr(rank, size, hostname())  # rank 0 says what it does from the start
    pool = pool or start_pool(config, comm)
    job = None
    try:
        job, done, model = _broadcast_job(config, comm, rank, pool)
        host = hostname()
        where = f"rank {rank} of {size} ({host})"
        stop_early_stderr()
        handlers = start_logging(config.resolved_run_dir, rank, size, host, to_stderr=rank == 0)
        try:
            if rank == 0:
                _log_plan(job)
            pool.start(ScorerSpec(job, model, pool.settings, where,
                                  FaultPlan.parse(config.faults), records_death=rank == 0))
            return _score(job, pool, done, comm, rank, size, started)
        finally:
            stop_logging(handlers)
    finally:
        stop_early_stderr()
        if job is not None and rank == 0:
            job.lock.release()
        pool.close()
        pool.reap()


def _log_plan(job: Job) -> None:
    plan = job.plan
    LOG.info("planned %s of <= %s rows (%s, %s); %s %s; starting the scoring sessions",
             plural(len(plan.batches), "batch", "batches"), f"{plan.batch_rows:,}",
             plural(plan.total_rows, "row"), plural(len(plan.files), "file"),
             "reopened" if job.config.resume else "created", job.target.partial)
    for warning in job.warnings:
        LOG.warning("%s", warning)


def _broadcast_job(config: JobConfig, comm: Any | None, rank: int, pool: ScorerPool
                   ) -> tuple[Job, set[int], bytes]:
    """Rank 0 prepares the job (in its first scoring process) and reads the model;
    every rank gets the job, the batches done before and the model, or raises
    rank 0's error."""
    outcome: tuple[Job, set[int], bytes] | BaseException | None = None
    if rank == 0:
        try:
            if pool.preparing is None:  # else the CLI asked already, and said so
                log_start(config, 1 if comm is None else comm.Get_size(), pool.size)
            pool.prepare(config)
            model = read_model(config.model)  # while the scoring process prepares
            job, done = pool.prepared()
            try:
                _check_same_model(job, model)
                _create_run_dir(job)
            except BaseException:
                job.lock.release()
                raise
            outcome = job, done, model
        except Exception as exc:
            outcome = exc
    outcome = broadcast(comm, outcome)
    if isinstance(outcome, MpiscoreError):
        raise outcome.as_collective()
    if isinstance(outcome, BaseException):
        raise MpiscoreError(f"setting up the job failed on rank 0: {outcome!r}",
                            collective=True) from outcome
    assert outcome is not None
    return outcome


def _check_same_model(job: Job, model: bytes) -> None:
    if model_digest(model) != job.model_sha256:
        raise ModelError(f"{job.model_name}: the model file changed while the job started; "
                         "start it again")


def _create_run_dir(job: Job) -> None:
    run_dir = job.config.resolved_run_dir
    try:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "plan.json", {**job.attrs, **job.plan.to_json()})
        write_json(run_dir / FINGERPRINT, job.fingerprint)
        write_config(run_dir, job.config)  # rerun or resume it: --config RUN_DIR/config.toml
        # replaced when the job ends; until then no earlier summary remains
        owner = job.lock.owner
        write_json(run_dir / "summary.json",
                   {"status": "running", "output": str(job.config.output),
                    "host": owner.host, "pid": owner.pid, "slurm": slurm_ids(),
                    "lock": [str(path) for path in job.lock.paths]})
        if not job.config.resume:  # a fresh job: its own runs only (report.append_history)
            (run_dir / HISTORY).unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(run_dir, exc, "cannot write the run directory") from exc


def _score(job: Job, pool: ScorerPool, done: set[int], comm: Any | None, rank: int, size: int,
           started: float) -> RunReport:
    config = job.config
    spec = pool.spec
    assert spec is not None
    ready = time.perf_counter()
    LOG.info("scoring: %s on this rank, %s each; %s of <= %s rows in all",
             plural(pool.size, "scoring process", "scoring processes"),
             plural(spec.settings.intra_op_threads, "intra-op thread"),
             plural(len(job.plan.batches), "batch", "batches"), f"{job.plan.batch_rows:,}")
    worker = RankWorker(pool, lambda message: None, config.window_for(pool.size), rank,
                        spec.faults, config.stop_grace)
    scheduler = None
    loop_started, loop_cpu = time.perf_counter(), time.process_time()
    with StopSignals(spec.where) as signals:
        if rank == 0:
            scheduler = _coordinate(job, done, worker, comm, size, signals.requested)
        else:
            link = MpiWorkerLink(comm)
            worker.send_up = link.send
            work(worker, link, signals.requested)
    loop = (time.perf_counter() - loop_started, time.process_time() - loop_cpu)
    pool.close()
    status = broadcast(comm, _status(scheduler) if rank == 0 else None)
    finish_error = _finish_output(job, scheduler, comm, status)
    stats = _rank_stats(worker, rank, spec, started, ready, loop)
    every_rank = gather(comm, (stats, finish_error))  # collective: on every rank, no branch
    report = None
    if rank == 0:
        assert scheduler is not None and every_rank is not None
        errors = [error for _, error in every_rank if error is not None]
        if errors:  # the output could not be finished: it stays partial
            scheduler.halt(errors[0][1], errors[0][0])
            status = _status(scheduler)
        report = _report(job, scheduler, status, [s for s, _ in every_rank], size, started,
                         ready)
    report = broadcast(comm, report)
    _raise_unless_complete(report)
    return report


def _coordinate(job: Job, done: set[int], worker: RankWorker, comm: Any | None, size: int,
                stop_requested: Any) -> Scheduler:
    """Rank 0: coordinate every rank, and score with its own processes in the same loop."""
    config = job.config
    todo = [b for b in job.plan.batches if b.batch_id not in done]
    policy = FailurePolicy(config.max_retries, config.error_threshold,
                           config.allowed_failed_percent)
    scheduler = Scheduler.for_batches(todo, job.plan.total_rows, policy)
    scheduler.completed.update(done)
    if done:
        LOG.info("resuming: %d of %d batches already written", len(done), len(job.plan.batches))
    remote = MpiCoordinatorLink(comm) if size > 1 else None
    inbox: deque[Message] = deque()
    outbox: deque[Message] = deque()
    worker.send_up = outbox.append
    journal = Journal(config.resolved_run_dir, journal_token(job.fingerprint),
                      len(job.plan.batches), fresh=not config.resume)
    progress = Progress(sum(b.rows for b in todo), len(todo), config.progress_seconds)

    def send(rank: int, message: Message) -> None:
        if rank == 0:
            inbox.append(message)
        else:
            assert remote is not None
            remote.send(rank, message)

    def on_complete(batch: Batch) -> None:
        if scheduler.stop_error != "StorageError":  # a journal that failed takes no more
            _halting_on(scheduler, lambda: journal.record(batch.batch_id))
        progress(batch.rows)
        status.tick()

    def between_messages() -> str | None:
        _halting_on(scheduler, job.lock.refresh)
        status.tick()  # RUN_DIR/status.json every STATUS_SECONDS: a time check
        return stop_requested()

    coordinator = Coordinator(scheduler, list(range(size)), send, on_complete)
    status = StatusFile(config.resolved_run_dir, scheduler, progress, coordinator.heard, size,
                        job.plan.total_rows, len(job.plan.batches))
    status.write("running")
    try:
        serve(coordinator, worker, inbox, outbox, remote, between_messages)
    finally:
        _halting_on(scheduler, journal.close)
        status.write(_status(scheduler))  # summary.json has the last word
    if scheduler.stop_reason is None and (change := changed_input(job.fingerprint)):
        scheduler.halt(change, "InputChanged")
    return scheduler


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


def _finish_output(job: Job, scheduler: Scheduler | None, comm: Any | None, status: str
                   ) -> tuple[str, str] | None:
    """Fill the rows of failed batches (rank 0), then finish the output on every rank.

    Returns the error (class name, message) that kept this rank from finishing it,
    for rank 0 to report, instead of raising between collectives."""
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    failure = None
    try:
        if scheduler is not None and status == "complete" and scheduler.failed:
            _write_fills(job, list(scheduler.failed.values()), writer)
    except MpiscoreError as exc:
        failure = exc
    writer.close()
    try:  # collective: every rank takes part, even one that failed above
        writer.finish(comm, complete=status == "complete" and failure is None)
    except MpiscoreError as exc:
        failure = failure or exc
    except OSError as exc:
        failure = failure or storage_error(job.target.partial, exc, "cannot finish the output")
    return None if failure is None else (type(failure).__name__, str(failure))


def _write_fills(job: Job, batches: list[Batch], writer: Any) -> None:
    """Failed rows get fill values and row_status 1; carried columns are kept where readable."""
    reader = open_reader(job.source)
    try:
        for batch in batches:
            columns: dict[str, Any] = fill_columns(list(job.outputs), batch.rows)
            try:
                columns.update(reader.read(batch)[1])
            except MpiscoreError:
                columns.update(fill_columns(list(job.kept), batch.rows))
            writer.write(batch, columns)
        writer.sync()
    finally:
        reader.close()


def _rank_stats(worker: RankWorker, rank: int, spec: ScorerSpec, started: float,
                ready: float, loop: tuple[float, float]) -> RankStats:
    s = worker.stats
    own = resource.getrusage(resource.RUSAGE_SELF)
    pool = worker.pool
    first = None if s.first_batch_done is None else s.first_batch_done - started
    return RankStats(rank, hostname(), s.batches, s.rows, s.failures, s.read, s.score, s.write,
                     own.ru_utime + own.ru_stime, pool.cpu_seconds,  # type: ignore[attr-defined]
                     pool.peak_rss_mib, *loop, ready - started, first,  # type: ignore[attr-defined]
                     pool.restarts,  # type: ignore[attr-defined]
                     spec.settings.intra_op_threads)


def _report(job: Job, scheduler: Scheduler, status: str, stats: list[RankStats],
            size: int, started: float, ready: float) -> RunReport:
    """The job's summary, written to the run directory (rank 0). A summary that cannot
    be written ends the job with a StorageError/OutputError naming it, as ``error``."""
    wall = time.perf_counter() - started
    rows = sum(s.rows for s in stats)
    run_dir = job.config.resolved_run_dir
    failed = [{"batch_id": b.batch_id, "file": job.plan.files[b.file_index].path,
               "file_rows": [b.start, b.stop], "rows": [b.global_start, b.global_stop],
               "attempts": [vars(a) for a in scheduler.attempts[b.batch_id]]}
              for b in scheduler.failed.values()]
    first = failed[0]["attempts"][-1]["error"] if failed else None
    output = job.target.final if status == "complete" else job.target.partial
    report = RunReport(status, scheduler.stop_reason, scheduler.stop_error, first, str(output),
                       str(run_dir), job.plan.total_rows, rows, len(job.plan.batches),
                       len(scheduler.completed), len(failed),
                       sum(b.rows for b in scheduler.failed.values()), size,
                       wall, ready - started, rows / wall, stats, slurm=slurm_ids())
    try:
        write_json(run_dir / "failed_batches.json", {"failed": failed})
        report = replace(report, job=append_history(run_dir, report))  # this run appended
        write_json(run_dir / "summary.json", report.to_json())
    except OSError as exc:
        error = storage_error(run_dir / "summary.json", exc, "cannot write the job's summary")
        kept = "is complete" if status == "complete" else "stays partial"
        first = f"{scheduler.stop_reason}; also " if scheduler.stop_error else ""
        return replace(report, status="failed", error=scheduler.stop_error or type(error).__name__,
                       stop_reason=f"{first}{error} ({output} {kept})")
    in_output = sum(b.rows for b in job.plan.batches if b.batch_id in scheduler.completed)
    earlier = in_output - rows
    LOG.info("%s: %s scored by this run in %.2fs on %s (%s rows/s); %s holds %s of %s "
             "batches, %s of %s rows%s, %d failed", status, plural(rows, "row"), wall,
             plural(size, "rank"), f"{rows / wall:,.0f}", output,
             f"{len(scheduler.completed):,}", f"{len(job.plan.batches):,}",
             f"{in_output:,}", f"{job.plan.total_rows:,}",
             f" ({earlier:,} from an earlier run)" if earlier > 0 else "", len(failed))
    return report


def _raise_unless_complete(report: RunReport) -> None:
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
