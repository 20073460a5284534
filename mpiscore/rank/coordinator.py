"""The coordinator (rank 0's role) and rank 0's loop, which also runs rank 0's own worker.

The coordinator answers the workers' messages (messages.py) by driving the
scheduler (schedule.py). Rank 0 runs it and its own worker in one loop:
messages between the two go through an in-process loopback, those of the
other ranks over MPI. :func:`wire` is the one place that wires them; the job
(api.py), the unit tests and the dispatch benchmark all use it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest

from ..plan import Batch
from ..report import LOG
from ..schedule import Attempt, Scheduler
from ..tuning import LONGEST_WAIT_SECONDS
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
from .world import Backoff, CoordinatorLink, Links, Loopback, Pacer, WorkerLink


class Coordinator:
    """Rank 0's role: answers worker messages by driving the scheduler.

    ``local`` links it to rank 0's own worker, ``remote`` (None when alone) to the others.

    A message costs O(1) in the number of ranks: the ranks that want work wait
    in a queue (``hungry``, first come first served), which is served only
    while the scheduler has batches to hand out, each rank its batches in one
    bundled Assign. A rank that may take nothing now is parked instead of
    being looked at again on every message: ``held_back`` when it already holds
    its fair share (Scheduler.may_take; it asks again as its own batches end,
    or all are looked at again when the share grows), ``starved`` when nothing
    is left that it may take (none at all, or only retries that failed on it:
    looked at again when a retry or a returned batch comes, or when nothing is
    in flight any more).
    Drain and Stop go to every rank, once each. :meth:`handle` takes in a message
    and serves at once; a loop that receives bursts calls :meth:`receive` for
    each message and :meth:`hand_out` after the burst, so a rank that reported
    several batches gets their successors in one message.
    """

    def __init__(self, scheduler: Scheduler, ranks: list[int], local: CoordinatorLink,
                 remote: CoordinatorLink | None,
                 on_complete: Callable[[list[Batch]], None] = lambda batches: None) -> None:
        """``on_complete``: called with the batches of each report (Completed), in order."""
        self.scheduler, self.ranks = scheduler, ranks
        self.links = {rank: local if rank == 0 else remote for rank in ranks}
        self.on_complete = on_complete
        self.wants = dict.fromkeys(ranks, 0)
        self.hungry: deque[int] = deque()  # ranks that want work, in the order they asked
        self.queued: set[int] = set()  # those in ``hungry``
        self.held_back: set[int] = set()  # want work, but hold their fair share already
        self.held_back_share = 0  # the fair share when the last of them was held back
        self.starved: set[int] = set()  # want work, but only retries failed there are left
        self.draining = False
        self.drain_started = 0.0  # time.monotonic() when the drain began
        self.heard: dict[int, float] = {}  # rank -> when its last message came (status.json)

    def send(self, rank: int, message: Message) -> None:
        link = self.links[rank]
        assert link is not None, f"no link to rank {rank}"
        link.send(rank, message)

    def handle(self, rank: int, message: Message) -> None:
        """Take in one message and serve whoever may be served now."""
        self.receive(rank, message)
        self.hand_out()

    def receive(self, rank: int, message: Message) -> None:
        """Take in one message without handing out yet: a loop that receives a burst of
        messages and then calls :meth:`hand_out` once sends each rank one bundle for
        all its reports instead of one Assign per report."""
        self.heard[rank] = time.time()
        scheduler = self.scheduler
        if isinstance(message, Completed):  # the busiest path first
            complete = scheduler.complete
            self.on_complete([complete(batch_id, rank, failed_items) for batch_id, failed_items
                              in zip_longest(message.batch_ids, message.failed_items,
                                             fillvalue=0)])
            self._want(rank, len(message.batch_ids))
            if not scheduler.in_flight and self.starved:
                self._wake(self.starved)  # no other rank busy: a retry may go where it failed
        elif isinstance(message, Request):
            self._want(rank, message.count)
        elif isinstance(message, Failed):
            self._failed(rank, message)
            self._want(rank, 1)
            self._more_to_hand_out()
        elif isinstance(message, Returned):
            for batch_id in reversed(message.batch_ids):  # to the front, in their order
                scheduler.give_back(batch_id, rank)
            self._want(rank, 0)
            self._more_to_hand_out()
        elif isinstance(message, StopRequested):
            scheduler.stop(message.reason)
        else:
            raise RuntimeError(f"coordinator got unexpected {message!r} from rank {rank}")
        if scheduler.stop_reason is not None:
            self._drain()

    def _want(self, rank: int, count: int) -> None:
        """``rank`` wants ``count`` more batches (and, having reported, may take again)."""
        wants = self.wants[rank] = self.wants[rank] + count
        if wants > 0 and rank not in self.queued:
            self.held_back.discard(rank)
            self.starved.discard(rank)
            self.queued.add(rank)
            self.hungry.append(rank)

    def _more_to_hand_out(self) -> None:
        """Batches came back (a retry, a returned batch): look again at the parked ranks
        they may be for; at those held back only if the fair share grew."""
        self._wake(self.starved)
        if self.held_back and \
                self.scheduler.fair_share(len(self.ranks)) > self.held_back_share:
            self._wake(self.held_back)

    def _wake(self, parked: set[int]) -> None:
        for rank in sorted(parked):
            if rank not in self.queued:
                self.queued.add(rank)
                self.hungry.append(rank)
        parked.clear()

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

    def hand_out(self) -> bool:
        """Serve the ranks that want work, in the order they asked, while there are
        batches: each gets what it asked for (and may take) in one Assign; one that
        is left wanting is parked. True if anything was sent."""
        scheduler, hungry, ranks = self.scheduler, self.hungry, len(self.ranks)
        sent = False
        while hungry and scheduler.has_work:
            rank = hungry.popleft()
            self.queued.discard(rank)
            wants = self.wants[rank]
            batches = scheduler.assign_many(rank, wants, ranks)
            if len(batches) < wants:
                if scheduler.has_work and not scheduler.may_take(rank, ranks):
                    self.held_back.add(rank)
                    self.held_back_share = scheduler.fair_share(ranks)
                else:
                    self.starved.add(rank)
            if batches:
                self.wants[rank] = wants - len(batches)
                attempts = tuple(map(scheduler.attempt, [b.batch_id for b in batches])) \
                    if scheduler.attempts else (0,) * len(batches)
                self.send(rank, Assign(tuple(batches), attempts))
                sent = True
        return sent

    def give_up_overdue(self, grace: float) -> None:
        """A stop whose batches are still out ``grace`` seconds after its drain began
        (a rank's word about them never came) leaves them for --resume: the job stops,
        rather than wait for ever. A rank abandons its own batches after --stop-grace
        (worker.py); this is for those it no longer knows it holds."""
        if not self.draining or time.monotonic() - self.drain_started < grace:
            return
        for batch_id, (_, rank) in list(self.scheduler.in_flight.items()):
            LOG.warning("batch %d: no word from rank %d %.0fs after the stop began; left for "
                        "--resume", batch_id, rank, grace)
            self.scheduler.give_back(batch_id, rank)

    def _drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()
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
                   on_complete: Callable[[list[Batch]], None] = lambda batches: None
                   ) -> RankZero:
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

    def serve(self, stop_requested: Callable[[], str | None],
              overdue_after: float = float("inf")) -> None:
        """Rank 0's loop: coordinate, and score with its own processes, until every batch
        is done.

        It waits on its own scoring processes' pipes, which wake it as soon as one
        of its batches ends. The other ranks' messages, which MPI cannot wake it
        for, are looked for after every wake-up and, while one of them may run
        dry, or once its own processes hold no batch (the job's tail), as the pacer
        says (RemoteWait); otherwise every LONGEST_WAIT_SECONDS (also how late a stop
        signal is seen), as alone (no other ranks). ``overdue_after``: seconds after a
        stop's drain began when batches still out are left for --resume
        (Coordinator.give_up_overdue).
        """
        coordinator, worker = self.coordinator, self.worker
        remote_wait = RemoteWait(coordinator.ranks[1:]) if self.remote is not None else None
        worker.start()
        while True:
            reason = stop_requested()
            if reason and coordinator.scheduler.stop_reason is None:
                coordinator.handle(0, StopRequested(reason))
            busy = self._pump(remote_wait)
            coordinator.give_up_overdue(overdue_after)
            if coordinator.finished:
                break
            worker.poll(0.0 if busy else LONGEST_WAIT_SECONDS if remote_wait is None else
                        remote_wait.next_delay(worker.idle))
        coordinator.stop_all()
        if self.remote is not None:
            _await_finished(self.remote, len(coordinator.ranks) - 1)

    def _pump(self, remote_wait: RemoteWait | None = None) -> bool:
        """Deliver every waiting message, rank 0's own first; True if there were any.

        The coordinator receives a whole burst before it hands out, so each rank
        gets one bundle for all its reports (Coordinator.receive, hand_out); after a
        hand-out the loop goes round again, as rank 0's own worker may have got one.
        ``remote_wait`` hears of each message from another rank.
        """
        coordinator, worker, remote = self.coordinator, self.worker, self.remote
        local = self.local.up[0]  # rank 0's own worker's messages, read in place: busiest path
        to_worker = worker.link.poll
        moved = False
        while True:
            if local:
                coordinator.receive(0, local.popleft())
            elif (message := to_worker()) is not None:
                if not isinstance(message, Stop):
                    worker.handle(message)
            elif remote is not None and (received := remote.poll()) is not None:
                if remote_wait is not None:
                    remote_wait.heard(*received)
                coordinator.receive(*received)
            elif not coordinator.hand_out():
                return moved
            moved = True


class RemoteWait:
    """How long rank 0 may wait on its own processes before it looks for the other ranks'
    messages again.

    While a rank may run dry (its last message was a report saying so, or asked for
    work: Request, Failed, Returned), as the pacer says, paced by such ranks'
    batches. While none may (each said in its last report that its processes hold
    plenty: a third of their depth or more, ~0.1 s of short batches, pool.low_mark),
    LONGEST_WAIT_SECONDS: their reports wait for rank 0's next wake-up, which its own
    pipes often bring sooner, instead of waking rank 0 several times each (short
    batches reported in bundles: ~300 timer wake-ups for 43 reports in 260 batches of
    10 ms).
    """

    def __init__(self, ranks: list[int]) -> None:
        self.pacer = Pacer()
        self.low = set(ranks)  # ranks that may run dry: at the start, all

    def heard(self, rank: int, message: Message) -> None:
        self.pacer.event(_events_in(message))
        if isinstance(message, Completed) and not message.running_low:
            self.low.discard(rank)
        else:
            self.low.add(rank)

    def next_delay(self, idle: bool = False) -> float:
        """``idle``: rank 0's own processes hold no batch, so only the other ranks' last
        reports are left to end the job: they are looked for promptly even from ranks
        whose processes hold plenty (Pacer, IDLE_POLL_SHARE)."""
        return self.pacer.next_delay(idle) if self.low or idle else LONGEST_WAIT_SECONDS


def _events_in(message: Message) -> int:
    """What a message counts for rank 0's pacer: each batch of a report from a rank that
    may run dry, so such a rank is answered at the pace of its batches; one for any
    other, so a rank whose processes hold plenty (short batches reported in bundles)
    costs rank 0 one look per report, not one per batch."""
    if isinstance(message, Completed) and message.running_low:
        return len(message.batch_ids)
    return 1


def _await_finished(remote: CoordinatorLink, count: int) -> None:
    """Receive (and drop) what workers still send, until each has said Finished."""
    backoff = Backoff()
    while count:
        received = remote.poll()
        if received is None:
            backoff.wait()
        elif isinstance(received[1], Finished):
            count -= 1
