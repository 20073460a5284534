"""The scoring processes of a rank: start, feed, watch, replace.

Each rank drives ``procs`` scoring processes, started with ``spawn`` (never
``fork`` after MPI is initialised). A scoring process opens its own reader,
ONNX Runtime session and writer once, then reads, scores and writes whole
batches itself; only batch descriptors and small results cross the pipe, never
arrays. A process that dies (segfault, OOM kill) or runs past the batch timeout
is killed and replaced, and its batch reported failed so the coordinator can
retry it. Scoring processes ignore SIGINT/SIGTERM (their rank decides how to
stop) and die with their rank (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .errors import MpiscoreError, ScoringError
from .faults import FaultPlan
from .io.registry import open_reader
from .job import Job
from .pipeline import BatchProcessor, Outcome
from .plan import Batch
from .score import Scorer, ScorerSettings, open_session

START_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class ScorerSpec:
    """What a scoring process needs, sent to it once at start."""

    job: Job
    settings: ScorerSettings
    where: str
    faults: FaultPlan


def scorer_main(conn: Connection, spec: ScorerSpec) -> None:
    """Body of a scoring process: set up once, then process batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    try:
        processor = _processor(spec)
    except BaseException as exc:
        conn.send(("init-failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ready",))
    while (item := _next_item(conn)) is not None:
        batch, attempt = item
        try:
            spec.faults.before_batch(batch.batch_id, attempt)
            times = processor(batch)
            conn.send(("done", times))
        except Exception as exc:
            conn.send(("failed", _describe(exc), traceback.format_exc()))
    processor.close()


def _processor(spec: ScorerSpec) -> BatchProcessor:
    job = spec.job
    session = open_session(job.model_bytes, job.model_name, spec.settings)
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    return BatchProcessor(open_reader(job.source), Scorer(session, job.bindings, job.model_name),
                          writer, job.outputs, job.output_sources, spec.where, job.config.on_nan)


def _next_item(conn: Connection) -> Any:
    try:
        return conn.recv()
    except EOFError:  # the rank is gone
        return None


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MpiscoreError) else f"{type(exc).__name__}: {exc}"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its rank dies (no orphaned scorers)."""
    with contextlib.suppress(OSError):  # not Linux: orphans end at their pipe's EOF
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ScorerProcess:
    """One scoring process and the batch it is working on."""

    def __init__(self, context: Any, spec: ScorerSpec, index: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=scorer_main, args=(child, spec), daemon=True,
                                       name=f"mpiscore-scorer-{index}")
        self.process.start()
        child.close()
        self.ready = False
        self.batch: Batch | None = None
        self.started = 0.0

    def submit(self, batch: Batch, attempt: int) -> None:
        self.batch, self.started = batch, time.monotonic()
        self.conn.send((batch, attempt))

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class ScorerPool:
    """``size`` scoring processes of one rank, replaced when they crash or hang."""

    def __init__(self, spec: ScorerSpec, size: int, batch_timeout: float | None) -> None:
        self.spec, self.batch_timeout = spec, batch_timeout
        self.context = multiprocessing.get_context("spawn")
        self.procs = [ScorerProcess(self.context, spec, i) for i in range(size)]
        self.restarts = 0
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(p.ready for p in self.procs):
            if time.monotonic() > deadline:
                raise ScoringError(f"{spec.where}: scoring processes did not start in "
                                   f"{START_TIMEOUT_SECONDS:.0f}s")
            self.poll(1.0)

    def submit_to(self, proc: ScorerProcess, batch: Batch, attempt: int) -> None:
        proc.submit(batch, attempt)

    @property
    def idle(self) -> list[ScorerProcess]:
        return [p for p in self.procs if p.ready and p.batch is None]

    @property
    def busy(self) -> list[ScorerProcess]:
        return [p for p in self.procs if p.batch is not None]

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for batches to end; replace dead or hung processes."""
        waiting = [p.conn for p in self.procs if p.batch is not None or not p.ready]
        if waiting:
            ready = set(wait(waiting, timeout))
        else:
            ready = set()
            time.sleep(timeout)
        outcomes = []
        for index, proc in enumerate(list(self.procs)):
            message = self._receive(proc) if proc.conn in ready else None
            if message is not None:
                outcome = self._message(proc, message)
            elif proc.batch is None:
                self._check_starting(proc)
                continue
            else:
                outcome = self._lost(proc)
                if outcome is not None:
                    self._replace(index)
            if outcome is not None:
                outcomes.append(outcome)
                proc.batch = None
        return outcomes

    @staticmethod
    def _receive(proc: ScorerProcess) -> tuple | None:
        try:
            return proc.conn.recv()
        except (EOFError, OSError):
            return None  # the process died: _lost or _check_starting reports it

    def _check_starting(self, proc: ScorerProcess) -> None:
        if not proc.process.is_alive():
            raise ScoringError(f"{self.spec.where}: a scoring process died while idle or "
                               f"starting ({_exit_text(proc.process.exitcode)})")

    def _lost(self, proc: ScorerProcess) -> Outcome | None:
        """The busy process's batch, if the process died or overran the timeout."""
        assert proc.batch is not None
        if not proc.process.is_alive() or proc.conn.closed:
            proc.process.join(1)
            return Outcome(proc.batch, False, f"scoring process on {self.spec.where} died "
                           f"({_exit_text(proc.process.exitcode)}) in this batch")
        elapsed = time.monotonic() - proc.started
        if self.batch_timeout is not None and elapsed > self.batch_timeout:
            return Outcome(proc.batch, False, f"batch timed out after {elapsed:.1f}s "
                           f"(--batch-timeout {self.batch_timeout:g}) on {self.spec.where}")
        return None

    def _message(self, proc: ScorerProcess, message: tuple) -> Outcome | None:
        kind = message[0]
        if kind == "ready":
            proc.ready = True
            return None
        if kind == "init-failed":
            raise ScoringError(f"{self.spec.where}: scoring process failed to start: "
                               f"{message[1]}")
        assert proc.batch is not None
        if kind == "done":
            return Outcome(proc.batch, True, times=message[1])
        return Outcome(proc.batch, False, message[1], message[2])  # the process stays

    def _replace(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index] = ScorerProcess(self.context, self.spec, index)
        self.restarts += 1

    def abandon(self) -> list[Batch]:
        """Kill the busy processes (at a stop past its grace period); their batches."""
        batches = [p.batch for p in self.procs if p.batch is not None]
        for proc in self.busy:
            proc.kill()
            proc.batch = None
        return batches

    def close(self) -> None:
        """Ask every process to finish, and kill those that do not."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.conn.send(None)
        for proc in self.procs:
            proc.process.join(10)
            if proc.process.is_alive():
                proc.kill()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
