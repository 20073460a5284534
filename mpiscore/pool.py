"""The scoring processes of a rank: start, feed, watch, replace.

Each rank drives ``procs`` scoring processes, started with ``spawn`` (never
``fork`` after MPI is initialised) as the very first thing the rank does, so
their interpreter start and imports overlap with the rank's own; the child
side lives in scorer.py. A scoring process opens its own reader,
ONNX Runtime session and writer once, then reads, scores and writes whole
batches itself; only batch descriptors and small results cross the pipe, never
arrays. A process that dies (segfault, OOM kill) or runs past the batch timeout
is killed and replaced, and its batch reported failed so the coordinator can
retry it. Scoring processes ignore SIGINT/SIGTERM (their rank decides how to
stop) and die with their rank (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from .errors import ScoringError
from .plan import Batch

if TYPE_CHECKING:  # this module stays light: the rank imports it before anything heavy
    from .faults import FaultPlan
    from .job import Job
    from .score import ScorerSettings

START_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class StageTimes:
    """Seconds one batch spent in each stage."""

    read: float
    score: float
    write: float


@dataclass(frozen=True)
class Outcome:
    """How a batch ended in a scoring process."""

    batch: Batch
    ok: bool
    error: str = ""
    traceback: str = ""
    times: StageTimes | None = None
    returned: bool = False  # lost with a process killed for another batch: no try counted


@dataclass(frozen=True)
class ScorerSpec:
    """What a scoring process needs, sent to it once at start."""

    job: Job
    settings: ScorerSettings
    where: str
    faults: FaultPlan


def _child_main(conn: Connection) -> None:
    """Entry of a scoring process: imports the heavy parts only there, in the child."""
    from .scorer import scorer_main

    scorer_main(conn)


class ScorerProcess:
    """One scoring process and the batch it is working on."""

    def __init__(self, context: Any, index: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child,), daemon=True,
                                       name=f"mpiscore-scorer-{index}")
        self.process.start()
        child.close()
        self.ready = False
        self.batch: Batch | None = None  # being read and scored
        self.writing: list[Batch] = []  # scored, being written (oldest first)
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

    def __init__(self, size: int, batch_timeout: float | None) -> None:
        """Start the processes now; they get their job from :meth:`start`."""
        self.batch_timeout = batch_timeout
        self.context = multiprocessing.get_context("spawn")
        self.procs = [ScorerProcess(self.context, i) for i in range(size)]
        self.size = size
        self.spec: ScorerSpec | None = None
        self.restarts = 0

    def start(self, spec: ScorerSpec) -> None:
        """Hand every process the job and wait until each has its session ready."""
        self.spec = spec
        for proc in self.procs:
            proc.conn.send(spec)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(p.ready for p in self.procs):
            if time.monotonic() > deadline:
                raise ScoringError(f"{spec.where}: scoring processes did not start in "
                                   f"{START_TIMEOUT_SECONDS:.0f}s")
            self.poll(1.0)

    def submit_to(self, proc: ScorerProcess, batch: Batch, attempt: int) -> None:
        proc.submit(batch, attempt)

    @property
    def where(self) -> str:
        return self.spec.where if self.spec else "this rank"

    @property
    def idle(self) -> list[ScorerProcess]:
        return [p for p in self.procs if p.ready and p.batch is None]

    @property
    def busy(self) -> list[ScorerProcess]:
        return [p for p in self.procs if p.batch is not None or p.writing]

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for batches to end; replace dead or hung processes."""
        waiting = [p.conn for p in self.procs if p.batch is not None or p.writing or not p.ready]
        if waiting:
            ready = set(wait(waiting, timeout))
        else:
            ready = set()
            time.sleep(timeout)
        outcomes: list[Outcome] = []
        for index, proc in enumerate(list(self.procs)):
            if proc.conn in ready:
                for message in self._receive_all(proc):
                    outcome = self._message(proc, message)
                    outcomes.extend([outcome] if outcome else [])
            if proc.batch is None and not proc.writing:
                self._check_idle(proc)
                continue
            lost = self._lost(proc)
            if lost:
                outcomes.extend(lost)
                self._replace(index)
        return outcomes

    @staticmethod
    def _receive_all(proc: ScorerProcess) -> list[tuple]:
        messages = []
        with contextlib.suppress(EOFError, OSError):  # the process died: _lost reports it
            while proc.conn.poll():
                messages.append(proc.conn.recv())
        return messages

    def _check_idle(self, proc: ScorerProcess) -> None:
        if not proc.process.is_alive():
            raise ScoringError(f"{self.where}: a scoring process died while idle or "
                               f"starting ({_exit_text(proc.process.exitcode)})")

    def _lost(self, proc: ScorerProcess) -> list[Outcome]:
        """The busy process's batches, if it died or overran the timeout (then it is killed).

        The batch being scored is charged with the failure (the one being written
        if none is); the others are handed back without counting a try.
        """
        if not proc.process.is_alive() or proc.conn.closed:
            proc.process.join(1)
            why = f"scoring process on {self.where} died ({_exit_text(proc.process.exitcode)})"
        elif proc.batch is not None and self.batch_timeout is not None and \
                time.monotonic() - proc.started > self.batch_timeout:
            why = (f"batch timed out after {time.monotonic() - proc.started:.1f}s "
                   f"(--batch-timeout {self.batch_timeout:g}) on {self.where}")
        else:
            return []
        batches = ([proc.batch] if proc.batch is not None else []) + proc.writing
        proc.batch, proc.writing = None, []
        return [Outcome(batches[0], False, why)] + [
            Outcome(b, False, why, returned=True) for b in batches[1:]]

    def _message(self, proc: ScorerProcess, message: tuple) -> Outcome | None:
        kind = message[0]
        if kind == "ready":
            proc.ready = True
            return None
        if kind == "init-failed":
            raise ScoringError(f"{self.where}: scoring process failed to start: "
                               f"{message[1]}")
        batch = self._take(proc, message[1])
        if kind == "scored":  # now being written; the process is free for the next batch
            proc.writing.append(batch)
            return None
        if kind == "done":
            return Outcome(batch, True, times=message[2])
        return Outcome(batch, False, message[2], message[3])  # failed; the process stays

    @staticmethod
    def _take(proc: ScorerProcess, batch_id: int) -> Batch:
        if proc.batch is not None and proc.batch.batch_id == batch_id:
            batch, proc.batch = proc.batch, None
            return batch
        index = next(i for i, b in enumerate(proc.writing) if b.batch_id == batch_id)
        return proc.writing.pop(index)

    def _replace(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index] = ScorerProcess(self.context, index)
        self.procs[index].conn.send(self.spec)
        self.restarts += 1

    def abandon(self) -> list[Batch]:
        """Kill the busy processes (at a stop past its grace period); their batches."""
        batches = []
        for index, proc in enumerate(list(self.procs)):
            if proc.batch is not None or proc.writing:
                batches += ([proc.batch] if proc.batch is not None else []) + proc.writing
                proc.batch, proc.writing = None, []
                self._replace(index)
        return batches

    def close(self) -> None:
        """Ask every process to finish, and kill those that do not (once; idempotent)."""
        procs, self.procs = self.procs, []
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.conn.send(None)
        for proc in procs:
            proc.process.join(10)
            if proc.process.is_alive():
                proc.kill()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
