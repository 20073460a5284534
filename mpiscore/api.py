"""``run(config, comm=None)``: the one place that wires plan, schedule, read, score, write, report.

Rank 0 prepares the job (every check happens there, before scoring) and
broadcasts it or the error; then rank 0 coordinates on its main thread while
its own worker scores on a second thread, and the other ranks work. Errors
raise on the rank that saw them; deciding to abort the MPI job is left to the
entry point (cli.py), as mpi4py.run does.
"""

from __future__ import annotations

import resource
import threading
import time
from typing import Any

from .config import JobConfig, gpus_per_node, usable_cores
from .errors import MpiscoreError, OutputError
from .io.registry import open_reader
from .job import Job, prepare
from .pipeline import BatchProcessor
from .protocol import WorkerTimes, coordinate, work
from .report import LOG, Progress, RankStats, RunReport, start_logging, stop_logging, write_json
from .schedule import Scheduler
from .score import Scorer, ScorerSettings, open_session
from .transport import (
    CoordinatorTransport,
    LocalHub,
    MpiWorkerLink,
    broadcast,
    gather,
    hostname,
    node_local,
    threads_supported,
)


def run(config: JobConfig, comm: Any | None = None) -> RunReport:
    """Score the job on every rank of ``comm`` (or in this process alone); rank 0's report."""
    started = time.perf_counter()
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    local_rank, local_size = node_local(comm)
    threads = config.session.intra_op_threads or max(1, usable_cores() // local_size)
    settings = ScorerSettings(config.session, threads, local_rank % gpus_per_node())
    job, scorer = _broadcast_job(config, settings, comm, rank)
    host = hostname()
    handlers = start_logging(config.resolved_run_dir, rank, size, host, to_stderr=rank == 0)
    try:
        if scorer is None:
            session = open_session(job.model_bytes, job.model_name, settings)
            scorer = Scorer(session, job.bindings, job.model_name)
        return _execute(job, scorer, comm, rank, size, host, started)
    finally:
        stop_logging(handlers)


def _broadcast_job(config: JobConfig, settings: ScorerSettings, comm: Any | None, rank: int
                   ) -> tuple[Job, Scorer | None]:
    """Rank 0 prepares the job; every rank gets it, or raises rank 0's error."""
    outcome: Job | BaseException | None = None
    scorer = None
    if rank == 0:
        try:
            outcome, scorer = prepare(config, settings)
            _create_run_dir(outcome)
        except Exception as exc:
            outcome = exc
    outcome = broadcast(comm, outcome)
    if isinstance(outcome, MpiscoreError):
        raise outcome.as_collective()
    if isinstance(outcome, BaseException):
        raise MpiscoreError(f"setting up the job failed on rank 0: {outcome!r}",
                            collective=True) from outcome
    assert outcome is not None
    return outcome, scorer


def _create_run_dir(job: Job) -> None:
    run_dir = job.config.resolved_run_dir
    try:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "plan.json", {**job.attrs, **job.plan.to_json()})
        # replaced when the job completes; until then no earlier "complete" summary remains
        write_json(run_dir / "summary.json",
                   {"status": "running", "output": str(job.config.output)})
    except OSError as exc:
        raise OutputError(f"--run-dir {run_dir}: cannot write: {exc.strerror or exc}") from exc


def _execute(job: Job, scorer: Scorer, comm: Any | None, rank: int, size: int, host: str,
             started: float) -> RunReport:
    writer = job.target.open_writer(list(job.outputs), list(job.kept), job.plan, job.offsets,
                                    job.attrs, comm)
    reader = open_reader(job.source)
    processor = BatchProcessor(reader, scorer, writer, job.outputs, job.output_sources,
                               f"rank {rank} of {size} ({host})")
    setup_done = time.perf_counter()
    threads = scorer.session.get_session_options().intra_op_num_threads
    LOG.info("scoring with %d intra-op threads, %d rank(s), %d batches of <= %d rows",
             threads, size, len(job.plan.batches), job.plan.batch_rows)
    if rank == 0:
        times, coordinator_cpu = _coordinate(job, comm, size, processor)
    else:
        times, coordinator_cpu = work(MpiWorkerLink(comm), processor, job.config.window), 0.0
    reader.close()
    writer.finish(comm)
    first = processor.times.first_batch_done
    stats = RankStats(rank, host, times.batches, times.rows, times.busy_seconds,
                      times.idle_seconds, times.idle_cpu_seconds, processor.times.read,
                      processor.times.score, processor.times.write, _process_cpu(),
                      None if first is None else first - started, threads)
    every_rank = gather(comm, stats)  # a collective: called on every rank, outside any branch
    report = None
    if rank == 0:
        report = _report(job, every_rank, size, started, setup_done, coordinator_cpu)
    return broadcast(comm, report)


def _coordinate(job: Job, comm: Any | None, size: int, processor: BatchProcessor
                ) -> tuple[WorkerTimes, float]:
    """Run the coordinator here and, when MPI allows threads, a worker beside it."""
    hub = LocalHub()
    ranks = list(range(1, size))
    result: dict[str, WorkerTimes] = {}
    worker = None
    if size == 1 or threads_supported():
        ranks.insert(0, 0)
        link = hub.link(0)

        def score_here() -> None:
            try:
                result["times"] = work(link, processor, job.config.window)
            except BaseException as exc:
                hub.report_failure(0, exc)

        worker = threading.Thread(target=score_here, name="mpiscore-worker", daemon=True)
        worker.start()
    else:
        LOG.warning("MPI lacks MPI_THREAD_MULTIPLE: rank 0 coordinates without scoring")
    batches = job.plan.batches
    progress = Progress(job.plan.total_rows, len(batches), {b.batch_id: b.rows for b in batches},
                        job.config.progress_seconds)
    cpu = time.thread_time()
    coordinate(CoordinatorTransport(hub, comm), Scheduler.for_batches(batches), ranks, progress)
    coordinator_cpu = time.thread_time() - cpu
    if worker is not None:
        worker.join()
    return result.get("times", WorkerTimes()), coordinator_cpu


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(job: Job, stats: list[RankStats] | None, size: int, started: float,
            setup_done: float, coordinator_cpu: float) -> RunReport:
    wall = time.perf_counter() - started
    rows = job.plan.total_rows
    report = RunReport("complete", str(job.config.output), str(job.config.resolved_run_dir),
                       rows, len(job.plan.batches), size, wall, setup_done - started,
                       rows / wall, coordinator_cpu, list(stats or []))
    write_json(job.config.resolved_run_dir / "summary.json", report.to_json())
    LOG.info("done: %d rows in %d batches on %d rank(s), %.2fs, %.0f rows/s -> %s",
             rows, len(job.plan.batches), size, wall, rows / wall, job.config.output)
    return report
