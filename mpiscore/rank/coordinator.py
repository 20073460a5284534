"""The coordinator (rank 0) and the rank workers (every rank), and the messages between them.

Protocol, all messages small and typed; bulk data never travels here:

    rank worker                        coordinator
      Request(count=window)     --->     hand out up to `count` batches
                                <---     Assign(batch, attempt) ...
      (its scoring processes read, score, write)
      Completed(batch_id)       --->     journal it, hand out one more
      Failed(batch_id, error)   --->     retry elsewhere or give up (error budget); or,
                                          when fatal (storage full, input changed), hand
                                          it back and stop the job with that error
      StopRequested(reason)     --->     (SIGTERM/SIGINT on that rank) stop handing out
                                <---     Drain()  when stopping: hand back what has not started
      Returned(batch_ids)       --->     back to the queue, for --resume
                                <---     Stop()   nothing in flight any more: leave the loop
      Finished()                --->     (rank 0 waits for every rank's Finished, so no
                                          message is left unreceived at MPI_Finalize)

A rank keeps ``window`` batches assigned (per scoring process one being
scored and one being written, plus one queued), so the next batch is there
before the current one ends and no rank waits on rank 0 between batches.
Rank 0 runs the coordinator and its own rank worker in one loop; messages
between them go through in-process queues.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ..faults import FaultPlan
from ..plan import Batch
from ..report import LOG
from ..schedule import Attempt, Scheduler
from .pool import Outcome, StageTimes
from .world import Backoff


@dataclass(frozen=True)
class Request:
    tag: ClassVar[int] = 11
    count: int


@dataclass(frozen=True)
class Completed:
    tag: ClassVar[int] = 12
    batch_id: int


@dataclass(frozen=True)
class Failed:
    tag: ClassVar[int] = 13
    batch_id: int
    error: str
    traceback: str = ""
    fatal: str = ""  # an error that is not the batch's (storage full, input changed): its class


@dataclass(frozen=True)
class StopRequested:
    tag: ClassVar[int] = 14
    reason: str


@dataclass(frozen=True)
class Returned:
    tag: ClassVar[int] = 15
    batch_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """A worker's last message, the answer to Stop: nothing more will come from it."""

    tag: ClassVar[int] = 16


@dataclass(frozen=True)
class Assign:
    tag: ClassVar[int] = 21
    batch: Batch
    attempt: int = 0


@dataclass(frozen=True)
class Drain:
    tag: ClassVar[int] = 22


@dataclass(frozen=True)
class Stop:
    tag: ClassVar[int] = 23


Message = (Request | Completed | Failed | StopRequested | Returned | Finished | Assign | Drain
           | Stop)


class Pool(Protocol):
    """What a rank worker needs from its scoring processes (pool.ScorerPool)."""

    @property
    def idle(self) -> list: ...

    def submit_to(self, proc: object, batch: Batch, attempt: int) -> None: ...

    def poll(self, timeout: float) -> list[Outcome]: ...

    def abandon(self) -> list[Batch]: ...


LONE_RANK_WAIT_SECONDS = 0.05


class Coordinator:
    """Rank 0's role: answers worker messages by driving the scheduler."""

    def __init__(self, scheduler: Scheduler, ranks: list[int], send: Callable[[int, Message], None],
                 on_complete: Callable[[Batch], None] = lambda batch: None) -> None:
        self.scheduler, self.ranks, self.send = scheduler, ranks, send
        self.on_complete = on_complete
        self.wants = dict.fromkeys(ranks, 0)
        self.draining = False
        self.heard: dict[int, float] = {}  # rank -> when its last message came (status.json)

    def handle(self, rank: int, message: Message) -> None:
        self.heard[rank] = time.time()
        if isinstance(message, Request):
            self.wants[rank] += message.count
        elif isinstance(message, Completed):
            self.on_complete(self.scheduler.complete(message.batch_id, rank))
            self.wants[rank] += 1
        elif isinstance(message, Failed):
            self._failed(rank, message)
            self.wants[rank] += 1
        elif isinstance(message, Returned):
            for batch_id in message.batch_ids:
                self.scheduler.give_back(batch_id, rank)
        elif isinstance(message, StopRequested):
            self.scheduler.stop(message.reason)
        else:
            raise RuntimeError(f"coordinator got unexpected {message!r} from rank {rank}")
        if self.scheduler.stop_reason is not None:
            self._drain()
        self._hand_out()

    def _failed(self, rank: int, message: Failed) -> None:
        if message.fatal:  # not the batch's fault: no try counted, the job stops
            self.scheduler.give_back(message.batch_id, rank)
            self.scheduler.halt(message.error, message.fatal)
            return
        given_up = self.scheduler.fail(message.batch_id, Attempt(rank, message.error,
                                                                 message.traceback))
        tries = self.scheduler.attempt(message.batch_id)
        LOG.warning("batch %d failed (try %d, %s): %s", message.batch_id, tries,
                    "given up" if given_up else "will retry", message.error)

    def _hand_out(self) -> None:
        for rank in self.ranks:
            while self.wants[rank] > 0 and self.scheduler.may_take(rank, len(self.ranks)):
                batch = self.scheduler.assign(rank)
                if batch is None:
                    break
                self.wants[rank] -= 1
                self.send(rank, Assign(batch, self.scheduler.attempt(batch.batch_id)))

    def _drain(self) -> None:
        if not self.draining:
            self.draining = True
            LOG.warning("stopping: %s", self.scheduler.stop_reason)
            for rank in self.ranks:
                self.send(rank, Drain())

    @property
    def finished(self) -> bool:
        return self.scheduler.finished

    def stop_all(self) -> None:
        for rank in self.ranks:
            self.send(rank, Stop())


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
    """A rank's role: keeps its scoring processes fed with assigned batches."""

    pool: Pool
    send_up: Callable[[Message], None]
    window: int
    rank: int = 0
    faults: FaultPlan = field(default_factory=FaultPlan)
    stop_grace: float = 30.0
    queue: deque[tuple[Batch, int]] = field(default_factory=deque)
    stats: WorkerStats = field(default_factory=WorkerStats)
    drain_started: float | None = None

    def start(self) -> None:
        self.send_up(Request(self.window))

    def handle(self, message: Message) -> None:
        if isinstance(message, Assign):
            self.queue.append((message.batch, message.attempt))
        elif isinstance(message, Drain):
            self.drain_started = time.monotonic()
            if self.queue:
                self.send_up(Returned(tuple(batch.batch_id for batch, _ in self.queue)))
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
                self.send_up(Completed(outcome.batch.batch_id))
                self.faults.after_rank_batch(self.rank)
            elif outcome.returned:
                self.send_up(Returned((outcome.batch.batch_id,)))
            else:
                self.stats.failures += 1
                self.send_up(Failed(outcome.batch.batch_id, outcome.error, outcome.traceback,
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
            self.send_up(Returned(tuple(batch.batch_id for batch in abandoned)))


class CoordinatorLink(Protocol):
    def poll(self) -> tuple[int, Message] | None: ...

    def send(self, rank: int, message: Message) -> None: ...


class WorkerLink(Protocol):
    def poll(self) -> Message | None: ...

    def send(self, message: Message) -> None: ...


def serve(coordinator: Coordinator, local: RankWorker, local_inbox: deque[Message],
          local_outbox: deque[Message], remote: CoordinatorLink | None,
          stop_requested: Callable[[], str | None]) -> None:
    """Rank 0's loop: coordinate, and score with its own processes, until every batch is done.

    Alone (no other ranks), it waits on its scoring processes' pipes, which wake
    it as soon as one reports, so it waits the same long while every time (the
    stop signals are checked in between) instead of polling MPI ever less often.
    """
    backoff = Backoff() if remote is not None else Backoff(LONE_RANK_WAIT_SECONDS,
                                                           LONE_RANK_WAIT_SECONDS)
    local.start()
    while True:
        reason = stop_requested()
        if reason and coordinator.scheduler.stop_reason is None:
            coordinator.handle(0, StopRequested(reason))
        busy = _pump(coordinator, local, local_inbox, local_outbox, remote)
        if coordinator.finished:
            break
        if busy:
            backoff.reset()
        local.poll(0.0 if busy else backoff.next_delay())
    coordinator.stop_all()
    if remote is not None:
        _await_finished(remote, len(coordinator.ranks) - 1)


def _await_finished(remote: CoordinatorLink, count: int) -> None:
    """Receive (and drop) what workers still send, until each has said Finished."""
    backoff = Backoff()
    while count:
        received = remote.poll()
        if received is None:
            backoff.wait()
        elif isinstance(received[1], Finished):
            count -= 1


def _pump(coordinator: Coordinator, local: RankWorker, local_inbox: deque[Message],
          local_outbox: deque[Message], remote: CoordinatorLink | None) -> bool:
    """Deliver every waiting message; True if there were any."""
    moved = False
    while True:
        if local_outbox:
            coordinator.handle(0, local_outbox.popleft())
        elif local_inbox:
            message = local_inbox.popleft()
            if not isinstance(message, Stop):
                local.handle(message)
        elif remote is not None and (received := remote.poll()) is not None:
            coordinator.handle(*received)
        else:
            return moved
        moved = True


def work(worker: RankWorker, link: WorkerLink, stop_requested: Callable[[], str | None]) -> None:
    """A rank's loop (ranks other than 0): score what rank 0 assigns until told to stop."""
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
