"""The scoring processes of a rank: start, feed, watch, replace.

Each rank drives ``procs`` scoring processes: fresh interpreters running
scorer.py (never ``fork`` of an MPI process), the first started before the
rank even imports MPI (see __main__.py), so their interpreter start and
imports (onnxruntime) overlap with the rank's own. Rank 0's first process also
checks and plans the job (prepare.py), so no rank ever loads onnxruntime.
A scoring process opens its own reader, ONNX Runtime session and writer
once, then reads, scores and writes whole batches itself; only batch
descriptors and small results cross the pipe, never arrays. A process that
dies (segfault, OOM kill) or runs past the batch timeout
is killed and replaced, and its batch reported failed so the coordinator can
retry it. Scoring processes ignore SIGINT/SIGTERM (their rank decides how to
stop) and die with their rank (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import ScoringError
from ..lock import JobLock, LockOwner, lock_paths
from ..placement import layout, scorer_settings
from ..plan import Batch
from ..tuning import SCORING_DEPTH
from ..wire import wait
from .process import ScorerProcess

if TYPE_CHECKING:  # this module stays light: the rank imports it before anything heavy
    from ..config import JobConfig, ScorerSettings
    from ..faults import FaultPlan
    from ..job import Job
    from .world import World

START_TIMEOUT_SECONDS = 600.0
CLOSE_TIMEOUT_SECONDS = 10.0


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
    fatal: str = ""  # the error is not the batch's (protocol.Failed.fatal)


@dataclass(frozen=True)
class ScorerSpec:
    """What a scoring process needs, sent to it once at start."""

    job: Job
    model_bytes: bytes | None  # None for the process that prepared the job: it has a session
    settings: ScorerSettings
    where: str
    faults: FaultPlan
    records_death: bool = False  # rank 0's: if the rank dies, say so in summary.json


@dataclass(frozen=True)
class PrepareRequest:
    """Asks rank 0's first scoring process to check, plan and create the job."""

    config: JobConfig
    settings: ScorerSettings
    owner: LockOwner  # rank 0's process, which holds the job's locks


def start_pool(config: JobConfig, world: World,
               started: Sequence[ScorerProcess] = ()) -> ScorerPool:
    """This rank's scoring processes for ``config``: as many as the layout gives each rank
    of its node, with the session settings of the rank's place on the node."""
    local_rank, ranks_on_node = world.node_local()
    return ScorerPool(layout(config, ranks_on_node).procs, config.batch_timeout,
                      scorer_settings(config, local_rank, ranks_on_node), started)


class ScorerPool:
    """``size`` scoring processes of one rank, replaced when they crash or hang."""

    def __init__(self, size: int, batch_timeout: float | None, settings: ScorerSettings,
                 started: Sequence[ScorerProcess] = ()) -> None:
        """Start the processes now (adopting ``started`` ones, launched even earlier);
        they get their job from :meth:`start`. ``settings``: their sessions'."""
        self.batch_timeout, self.settings = batch_timeout, settings
        self.procs = [*started, *(ScorerProcess() for _ in range(size - len(started)))]
        self.size = size
        self.spec: ScorerSpec | None = None
        self.restarts = 0
        self.cpu_seconds = 0.0  # of the processes that closed normally
        self.peak_rss_mib = 0.0
        self.preparing: PrepareRequest | None = None
        self.closing: list[ScorerProcess] = []

    def prepare(self, config: JobConfig) -> None:
        """Rank 0: ask the first scoring process to check the job, plan it and create the
        output (prepare.py); :meth:`prepared` waits for the answer. Asks once.

        That process loads the model anyway, keeping its session for scoring; the
        rank never imports onnxruntime, and can import the rest meanwhile.
        """
        if self.preparing is None:
            self.preparing = PrepareRequest(config, self.settings, LockOwner.here())
            try:
                self.procs[0].conn.send(self.preparing)
            except OSError:  # it died starting (killed, out of memory): one fresh try
                self.procs[0].kill()
                self.procs[0] = ScorerProcess()
                self.procs[0].conn.send(self.preparing)

    def prepared(self) -> tuple[Job, set[int]]:
        """The job :meth:`prepare` asked for, and the batches an interrupted run already
        wrote; raises the error the checks found."""
        assert self.preparing is not None, "prepare() first"
        first, config = self.procs[0], self.preparing.config
        model = config.model
        lock = JobLock(lock_paths(config.output, config.resolved_run_dir), self.preparing.owner)
        while not wait([first.conn], 1.0):
            lock.refresh(taken=False)  # planning 10,000 files may take minutes: stay alive
            if not first.alive():
                break
        try:
            kind, *answer = first.conn.recv()
        except (EOFError, OSError):
            first.join(1)
            raise ScoringError(f"{model}: the scoring process died while loading the "
                               f"model and checking the job ({first.exit_text()})") from None
        if kind == "prepare-failed":
            raise answer[0]
        return answer[0], answer[1]

    def start(self, spec: ScorerSpec) -> None:
        """Hand every process the job and wait until each has its session ready."""
        self.spec = spec
        for index, proc in enumerate(self.procs):
            prepared = index == 0 and self.preparing is not None
            try:
                proc.conn.send(replace(spec, model_bytes=None) if prepared else
                               spec if index == 0 else replace(spec, records_death=False))
            except OSError:  # it died since it started: a fresh one, given the model
                self._replace(index)
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
        """Processes that can take another batch now, the least loaded first."""
        return sorted((p for p in self.procs if p.ready and len(p.scoring) < SCORING_DEPTH),
                      key=lambda p: len(p.scoring))

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for batches to end; replace dead or hung processes."""
        waiting = [p.conn for p in self.procs if p.busy or not p.ready]
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
            if not proc.busy:
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
        if not proc.alive():
            raise ScoringError(f"{self.where}: a scoring process died while idle or "
                               f"starting ({proc.exit_text()})")

    def _lost(self, proc: ScorerProcess) -> list[Outcome]:
        """The busy process's batches, if it died or overran the timeout (then it is killed).

        The batch being scored is charged with the failure (the one being written
        if none is); the others are handed back without counting a try.
        """
        if not proc.alive() or proc.conn.closed:
            proc.join(1)
            why = f"scoring process on {self.where} died ({proc.exit_text()})"
        elif proc.scoring and self.batch_timeout is not None and \
                time.monotonic() - proc.started > self.batch_timeout:
            why = (f"batch timed out after {time.monotonic() - proc.started:.1f}s "
                   f"(--batch-timeout {self.batch_timeout:g}) on {self.where}")
        else:
            return []
        batches = proc.release()
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
        batch = proc.take(message[1])
        if kind == "scored":  # now being written; the process is free for the next batch
            proc.writing.append(batch)
            return None
        if kind == "done":
            return Outcome(batch, True, times=message[2])
        return Outcome(batch, False, message[2], message[3], fatal=message[4])  # it stays

    def _replace(self, index: int) -> None:
        self.procs[index].kill()
        self.procs[index] = ScorerProcess()
        assert self.spec is not None
        self.procs[index].conn.send(self.spec if index == 0 else
                                    replace(self.spec, records_death=False))
        self.restarts += 1

    def abandon(self) -> list[Batch]:
        """Kill the busy processes (at a stop past its grace period); their batches."""
        batches = []
        for index, proc in enumerate(list(self.procs)):
            if proc.busy:
                batches += proc.release()
                self._replace(index)
        return batches

    def close(self) -> None:
        """Ask every process to finish, and kill those that do not (once; idempotent).

        A process says when it has closed its files, with what it used; its exit
        is awaited only by :meth:`reap`, so the rank can finish the job meanwhile.
        """
        procs, self.procs = self.procs, []
        self.closing += procs
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.conn.send(None)
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        for proc in procs:
            usage = _closing_message(proc, deadline)
            if usage is None:
                proc.kill()
            else:
                self.cpu_seconds += usage[0]
                self.peak_rss_mib = max(self.peak_rss_mib, usage[1])

    def reap(self) -> None:
        """Wait for closed processes to exit (killing those that hang)."""
        closing, self.closing = self.closing, []
        for proc in closing:
            proc.join(CLOSE_TIMEOUT_SECONDS)
            if proc.alive():
                proc.kill()


def _closing_message(proc: ScorerProcess, deadline: float) -> tuple[float, float] | None:
    """A closing process's CPU seconds and peak RSS (MiB), or None if it did not close
    by ``deadline``; other messages left in its pipe are dropped."""
    with contextlib.suppress(EOFError, OSError):
        while proc.conn.poll(max(0.0, deadline - time.monotonic())):
            message = proc.conn.recv()
            if message[0] == "closed":
                return message[1], message[2]
    return None
