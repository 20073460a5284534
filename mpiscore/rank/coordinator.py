"""The coordinator (rank 0's role) and rank 0's loop, which also runs rank 0's own worker.

The coordinator answers the workers' messages (messages.py) by driving the
scheduler (schedule.py). Rank 0 runs it and its own worker in one loop:
messages between the two go through an in-process loopback, those of the
other ranks over MPI. :func:`wire` is the one place that wires them; the job
(api.py), the unit tests and the dispatch benchmark all use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..plan import Batch
from ..report import LOG
from ..schedule import Attempt, Scheduler
from ..tuning import LONE_RANK_WAIT_SECONDS
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
from .worker import RankWorker
from .world import Backoff, CoordinatorLink, Links, Loopback, WorkerLink


class Coordinator:
    """Rank 0's role: answers worker messages by driving the scheduler.

    ``local`` links it to rank 0's own worker, ``remote`` (None when alone) to the others.
    """

    def __init__(self, scheduler: Scheduler, ranks: list[int], local: CoordinatorLink,
                 remote: CoordinatorLink | None,
                 on_complete: Callable[[Batch], None] = lambda batch: None) -> None:
        self.scheduler, self.ranks = scheduler, ranks
        self.links = {rank: local if rank == 0 else remote for rank in ranks}
        self.on_complete = on_complete
        self.wants = dict.fromkeys(ranks, 0)
        self.draining = False
        self.heard: dict[int, float] = {}  # rank -> when its last message came (status.json)

    def send(self, rank: int, message: Message) -> None:
        link = self.links[rank]
        assert link is not None, f"no link to rank {rank}"
        link.send(rank, message)

    def handle(self, rank: int, message: Message) -> None:
        self.heard[rank] = time.time()
        if isinstance(message, Request):
            self.wants[rank] += message.count
        elif isinstance(message, Completed):
            self.on_complete(self.scheduler.complete(message.batch_id, rank,
                                                     message.failed_items))
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


def wire_rank_zero(scheduler: Scheduler, links: Links,
                   worker: Callable[[WorkerLink], RankWorker],
                   on_complete: Callable[[Batch], None] = lambda batch: None) -> RankZero:
    """Rank 0, wired: the coordinator of ``links.size`` ranks, rank 0's own worker (built
    by ``worker`` on its in-process link), and the link to the other ranks if any."""
    local = Loopback()
    remote = links.coordinator_link()
    coordinator = Coordinator(scheduler, list(range(links.size)), local, remote, on_complete)
    return RankZero(coordinator, worker(local.worker_link(0)), local, remote)


@dataclass
class RankZero:
    """Rank 0's coordinator and its own worker, with their links (built by
    :func:`wire_rank_zero`)."""

    coordinator: Coordinator
    worker: RankWorker
    local: Loopback
    remote: CoordinatorLink | None

    def serve(self, stop_requested: Callable[[], str | None]) -> None:
        """Rank 0's loop: coordinate, and score with its own processes, until every batch
        is done.

        Alone (no other ranks), it waits on its scoring processes' pipes, which wake
        it as soon as one reports, so it waits the same long while every time (the
        stop signals are checked in between) instead of polling MPI ever less often.
        """
        coordinator, worker = self.coordinator, self.worker
        backoff = Backoff() if self.remote is not None else Backoff(LONE_RANK_WAIT_SECONDS,
                                                                    LONE_RANK_WAIT_SECONDS)
        worker.start()
        while True:
            reason = stop_requested()
            if reason and coordinator.scheduler.stop_reason is None:
                coordinator.handle(0, StopRequested(reason))
            busy = self._pump()
            if coordinator.finished:
                break
            if busy:
                backoff.reset()
            worker.poll(0.0 if busy else backoff.next_delay())
        coordinator.stop_all()
        if self.remote is not None:
            _await_finished(self.remote, len(coordinator.ranks) - 1)

    def _pump(self) -> bool:
        """Deliver every waiting message, rank 0's own first; True if there were any."""
        coordinator, worker, remote = self.coordinator, self.worker, self.remote
        local = self.local.up[0]  # rank 0's own worker's messages, read in place: busiest path
        to_worker = worker.link.poll
        moved = False
        while True:
            if local:
                coordinator.handle(0, local.popleft())
            elif (message := to_worker()) is not None:
                if not isinstance(message, Stop):
                    worker.handle(message)
            elif remote is not None and (received := remote.poll()) is not None:
                coordinator.handle(*received)
            else:
                return moved
            moved = True


def _await_finished(remote: CoordinatorLink, count: int) -> None:
    """Receive (and drop) what workers still send, until each has said Finished."""
    backoff = Backoff()
    while count:
        received = remote.poll()
        if received is None:
            backoff.wait()
        elif isinstance(received[1], Finished):
            count -= 1
