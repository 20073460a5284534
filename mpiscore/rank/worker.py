"""The worker: every rank's role, keeping its scoring processes fed with assigned batches.

The worker asks the coordinator for ``window`` batches, hands them to its
idle scoring processes, reports each batch's end and asks for one more per
batch ended (messages.py). Ranks other than 0 run :func:`work`; rank 0's worker
runs inside the coordinator's loop (coordinator.py).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..faults import FaultPlan
from ..report import LOG
from ..tuning import LONGEST_WAIT_SECONDS, WORKER_POLL_SHARE
from .messages import (
    Assign,
    Completed,
    Drain,
    Failed,
    Finished,
    Message,
    Request,
    Returned,
    Stop,
    StopRequested,
)
from .world import Pacer, WorkerLink

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..plan import Batch
    from ..wire import StageSeconds
    from .pool import Outcome

Process = TypeVar("Process")


class ScoringProcesses(Protocol[Process]):
    """What a worker needs from its scoring processes (pool.ScorerPool has it)."""

    @property
    def idle(self) -> list[Process]:
        """Processes that can take another batch now, the one to use first first."""

    def submit_to(self, proc: Process, batch: Batch, attempt: int) -> None:
        """Give ``proc`` a batch (it counts at once: ``idle`` sees it)."""

    def hand_over(self) -> None:
        """Send what :meth:`submit_to` gave each process, one message each."""

    def deepen(self, seconds_per_batch: float) -> int:
        """Let each process hold more batches when they are this short; how many more
        they may hold in all."""

    @property
    def holding(self) -> bool:
        """Whether any process holds a batch (scoring or writing it)."""

    @property
    def running_low(self) -> bool:
        """Whether a process holds so few batches (under SCORING_DEPTH, or a third of
        its share once deepened) that it may run dry before the next assignment
        reaches it: only then are assignments urgent."""

    def poll(self, timeout: float) -> list[Outcome]:
        """Wait up to ``timeout`` seconds for batches to end; how they ended."""

    def abandon(self) -> list[Batch]:
        """Kill the busy processes (a stop past its grace period); their batches."""


@dataclass
class WorkerStats:
    """What one rank's scoring processes did."""

    batches: int = 0
    rows: int = 0
    failures: int = 0
    read: float = 0.0
    score: float = 0.0
    write: float = 0.0
    first_batch_done: float | None = None

    def add(self, batch: Batch, times: StageSeconds) -> None:
        read, score, write = times
        self.batches += 1
        self.rows += batch.rows
        self.read += read
        self.score += score
        self.write += write
        if self.first_batch_done is None:
            self.first_batch_done = time.perf_counter()


@dataclass
class RankWorker:
    """A rank's role: keeps its scoring processes fed with assigned batches.

    ``link`` goes to the coordinator: over MPI from ranks other than 0, in
    process (world.Loopback) from rank 0's own worker.
    """

    pool: ScoringProcesses[Any]
    link: WorkerLink
    window: int
    rank: int = 0
    faults: FaultPlan = field(default_factory=FaultPlan)
    stop_grace: float = 30.0
    deepens: bool = True  # lets its processes hold more where batches are short (not --window)
    queue: deque[tuple[Batch, int]] = field(default_factory=deque)
    stats: WorkerStats = field(default_factory=WorkerStats)
    drain_started: float | None = None
    requested: int = 0  # batches asked for: the window, and one per batch reported ended
    submitted: int = 0  # batches handed to the scoring processes
    just_asked: int = 0  # of ``requested``, those asked for in the last poll (not answered yet)
    pacer: Pacer = field(default_factory=lambda: Pacer(WORKER_POLL_SHARE))  # when to look
    stopped: bool = False  # a Stop came in through take_in: work() says Finished

    def start(self) -> None:
        """Ask for the first window; once (a rank asks before its processes are ready, and
        :func:`work` starts the worker it is given)."""
        if not self.requested:
            self.requested += self.window
            self.link.send(Request(self.window))

    @property
    def owed(self) -> int:
        """Batches asked for and not assigned yet (before a Drain, which clears the queue:
        after it, Stop is what is due)."""
        return self.requested - self.submitted - len(self.queue)

    def patience(self) -> float:
        """How long to wait on the scoring processes before looking at the link again:
        while assignments are due and a process could take one now, as the pacer says
        (a share of the usual time between batch ends, growing while none comes); else
        only as late as a Drain may be seen. While every process holds enough not to run
        dry (all it may, or SCORING_DEPTH of a deeper share), the message on its pipe
        that makes room wakes the rank, and that wake-up looks at the link too: a
        timer would wake the rank for nothing. A rank that holds no batch (the job's
        tail: the Stop is due) looks more often (Pacer, IDLE_POLL_SHARE)."""
        if self.drain_started is not None or (self.owed > 0 and self.pool.running_low):
            return self.pacer.next_delay(self.idle)
        return LONGEST_WAIT_SECONDS

    @property
    def idle(self) -> bool:
        """Whether the rank holds no batch: no pipe will wake it, only MPI (Pacer)."""
        return not self.queue and not self.pool.holding

    def handle(self, message: Message) -> None:
        if isinstance(message, Assign):
            self.queue.extend(zip(message.batches, message.attempts, strict=True))
        elif isinstance(message, Drain):
            self.drain_started = time.monotonic()
            if self.queue:
                self.link.send(Returned(tuple(batch.batch_id for batch, _ in self.queue)))
                self.queue.clear()
        else:
            raise RuntimeError(f"rank {self.rank} got unexpected {message!r}")
        self._feed()

    def take_in(self) -> None:
        """Take in what waits on the link: assignments go to the processes at once; a
        Stop is kept for the loop (``stopped``). Called before a report while the
        answer to an earlier one is due, so the report's ``running_low`` counts what
        that answer brought (else a rank would look low to rank 0, which then hurries,
        each time its answer was waiting unread)."""
        while not self.stopped and (message := self.link.poll()) is not None:
            if isinstance(message, Stop):
                self.stopped = True
            else:
                self.handle(message)

    def stop_heard(self) -> bool:
        """Whether rank 0 asked this rank to stop (a Drain, or the Stop), taking in what
        waits on the link: while the rank's processes start, a Drain returns the batches
        queued here, so the others' stop need not wait for them to be ready."""
        self.take_in()
        return self.stopped or self.drain_started is not None

    def _feed(self) -> None:
        """Hand queued batches to the processes with room, the least loaded first, each
        its share in one message."""
        while self.queue and (idle := self.pool.idle):
            batch, attempt = self.queue.popleft()
            self.pool.submit_to(idle[0], batch, attempt)
            self.submitted += 1
        self.pool.hand_over()

    def _deepen(self) -> None:
        """When batches prove short, the processes may hold more (pool.deepen): the window
        grows by as many, asked for at once."""
        stats = self.stats
        more = self.pool.deepen((stats.read + stats.score + stats.write) / stats.batches)
        if more:
            self.window += more
            self.requested += more
            self.link.send(Request(more))

    def poll(self, timeout: float) -> None:
        """Collect finished batches, report them, and keep the processes busy."""
        self.just_asked = 0
        completed: list[int] = []
        failed_items: list[int] = []
        for outcome in self.pool.poll(timeout):
            if not outcome.returned:  # reported ended: the coordinator owes one more
                self.just_asked += 1
            if outcome.ok:
                assert outcome.times is not None
                self.stats.add(outcome.batch, outcome.times)
                completed.append(outcome.batch.batch_id)
                failed_items.append(outcome.failed_items)
            elif outcome.returned:
                self.link.send(Returned((outcome.batch.batch_id,)))
            else:
                self.stats.failures += 1
                self.link.send(Failed(outcome.batch.batch_id, outcome.error, outcome.traceback,
                                      outcome.fatal))
        if self.just_asked:
            self.requested += self.just_asked
            self.pacer.event(self.just_asked)
        self._feed()
        if completed and self.owed > self.just_asked:
            self.take_in()  # the answer to an earlier report may be here: low is then known
        if completed:  # one report for all: rank 0 journals them and hands out as many
            self.link.send(Completed(tuple(completed),
                                     tuple(failed_items) if any(failed_items) else (),
                                     self.pool.running_low))
            self.faults.after_rank_batch(self.rank)
            if self.deepens and self.drain_started is None:
                self._deepen()
        self._abandon_after_grace()

    def _abandon_after_grace(self) -> None:
        if self.drain_started is None or time.monotonic() - self.drain_started < self.stop_grace:
            return
        abandoned = self.pool.abandon()
        if abandoned:
            LOG.warning("abandoning %d batch%s still running %.0fs after the stop (they are "
                        "left for --resume)", len(abandoned), "es" * (len(abandoned) != 1),
                        self.stop_grace)
            self.link.send(Returned(tuple(batch.batch_id for batch in abandoned)))


def work(worker: RankWorker, stop_requested: Callable[[], str | None]) -> None:
    """A rank's loop (ranks other than 0): score what rank 0 assigns until told to stop.

    It blocks on its scoring processes' pipes (a batch's end wakes it at once). MPI,
    which cannot wake it, is looked at after each wake-up while assignments are
    due and none waits here to be handed out (or, after a Drain, for the Stop),
    woken for as :meth:`RankWorker.patience` says; otherwise every
    LONGEST_WAIT_SECONDS, for a Drain, which may come at any time. A probe of MPI
    costs as much as the Python around it, so it is not made on wake-ups that
    need none.
    """
    link = worker.link
    worker.start()
    asked_to_stop = False
    looked = time.monotonic()  # when the link was last looked at
    while True:
        if worker.stopped:  # seen while it took in assignments before a report
            link.send(Finished())
            return
        reason = stop_requested()
        if reason and not asked_to_stop:
            asked_to_stop = True
            link.send(StopRequested(reason))
        now = time.monotonic()
        # what was asked for a moment ago cannot be answered yet: it is looked for on
        # the next wake-up; nor is an assignment needed while a batch waits here for
        # the next process with room (after a wake-up a probe costs ~20 us, not 0.2)
        if (worker.owed > worker.just_asked and not worker.queue) or \
                worker.drain_started is not None or now - looked >= LONGEST_WAIT_SECONDS:
            looked = now
            message = link.poll()
            if isinstance(message, Stop):
                link.send(Finished())
                return
            if message is not None:
                worker.handle(message)
                worker.just_asked = 0
                if worker.owed > 0 or worker.drain_started is not None:
                    continue  # more may be waiting; else the next look is soon enough
        worker.poll(worker.patience())
