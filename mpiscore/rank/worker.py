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
from .world import Backoff, WorkerLink

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..plan import Batch
    from ..wire import StageTimes
    from .pool import Outcome

Process = TypeVar("Process")


class ScoringProcesses(Protocol[Process]):
    """What a worker needs from its scoring processes (pool.ScorerPool has it)."""

    @property
    def idle(self) -> list[Process]:
        """Processes that can take another batch now, the one to use first first."""

    def submit_to(self, proc: Process, batch: Batch, attempt: int) -> None: ...

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

    def add(self, batch: Batch, times: StageTimes) -> None:
        self.batches += 1
        self.rows += batch.rows
        self.read, self.score, self.write = (self.read + times.read, self.score + times.score,
                                             self.write + times.write)
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
    queue: deque[tuple[Batch, int]] = field(default_factory=deque)
    stats: WorkerStats = field(default_factory=WorkerStats)
    drain_started: float | None = None

    def start(self) -> None:
        self.link.send(Request(self.window))

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

    def _feed(self) -> None:
        while self.queue and (idle := self.pool.idle):
            batch, attempt = self.queue.popleft()
            self.pool.submit_to(idle[0], batch, attempt)

    def poll(self, timeout: float) -> None:
        """Collect finished batches, report them, and keep the processes busy."""
        for outcome in self.pool.poll(timeout):
            if outcome.ok:
                assert outcome.times is not None
                self.stats.add(outcome.batch, outcome.times)
                self.link.send(Completed(outcome.batch.batch_id, outcome.failed_items))
                self.faults.after_rank_batch(self.rank)
            elif outcome.returned:
                self.link.send(Returned((outcome.batch.batch_id,)))
            else:
                self.stats.failures += 1
                self.link.send(Failed(outcome.batch.batch_id, outcome.error, outcome.traceback,
                                      outcome.fatal))
        self._feed()
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
    """A rank's loop (ranks other than 0): score what rank 0 assigns until told to stop."""
    link = worker.link
    backoff = Backoff()
    worker.start()
    asked_to_stop = False
    while True:
        reason = stop_requested()
        if reason and not asked_to_stop:
            asked_to_stop = True
            link.send(StopRequested(reason))
        message = link.poll()
        if isinstance(message, Stop):
            link.send(Finished())
            return
        if message is not None:
            worker.handle(message)
            backoff.reset()
            continue
        worker.poll(backoff.next_delay())
