"""The coordinator and rank workers, wired through in-process queues with fake pools."""

from __future__ import annotations

from collections import deque

from mpiscore.plan import Batch, SourceFile, make_plan
from mpiscore.pool import Outcome, StageTimes
from mpiscore.protocol import (
    Assign,
    Completed,
    Coordinator,
    Drain,
    Failed,
    Finished,
    RankWorker,
    Request,
    Returned,
    Stop,
    StopRequested,
)
from mpiscore.schedule import FailurePolicy, Scheduler

TIMES = StageTimes(0.0, 0.0, 0.0)


class FakePool:
    """Scores instantly; ``fail`` lists batch ids whose first try fails."""

    def __init__(self, procs: int, fail: set[int] = frozenset()) -> None:
        self.slots: list[tuple[Batch, int] | None] = [None] * procs
        self.fail, self.done, self.restarts = set(fail), [], 0

    @property
    def idle(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    @property
    def busy(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is not None]

    def submit_to(self, proc: int, batch: Batch, attempt: int) -> None:
        self.slots[proc] = (batch, attempt)

    def poll(self, timeout: float) -> list[Outcome]:
        outcomes = []
        for i in self.busy:
            batch, attempt = self.slots[i]
            self.slots[i] = None
            ok = not (batch.batch_id in self.fail and attempt == 0)
            outcomes.append(Outcome(batch, ok, "" if ok else "boom", times=TIMES))
            if ok:
                self.done.append(batch.batch_id)
        return outcomes

    def abandon(self) -> list[Batch]:
        batches = [s[0] for s in self.slots if s is not None]
        self.slots = [None] * len(self.slots)
        return batches


def run_job(pools: dict[int, FakePool], batches: int = 20, window: int = 2,
            stop_after: int | None = None) -> Scheduler:
    """Drive the coordinator and every rank worker until the coordinator finishes."""
    plan = make_plan([SourceFile("a", 10 * batches)], 10)
    scheduler = Scheduler.for_batches(plan.batches, plan.total_rows, FailurePolicy())
    inboxes = {rank: deque() for rank in pools}
    outbox: deque = deque()
    coordinator = Coordinator(scheduler, list(pools), lambda r, m: inboxes[r].append(m))
    workers = {rank: RankWorker(pool, lambda m, r=rank: outbox.append((r, m)), window, rank)
               for rank, pool in pools.items()}
    for worker in workers.values():
        worker.start()
    for step in range(10_000):
        if stop_after is not None and step == stop_after:
            coordinator.handle(0, StopRequested("test"))
        while outbox:
            coordinator.handle(*outbox.popleft())
        if coordinator.finished:
            break
        for rank, worker in workers.items():
            while inboxes[rank]:
                worker.handle(inboxes[rank].popleft())
            worker.poll(0.0)
    coordinator.stop_all()
    assert all(isinstance(inboxes[r][-1], Stop) for r in pools)
    return scheduler


def test_every_batch_scored_exactly_once_across_ranks() -> None:
    pools = {0: FakePool(1), 1: FakePool(2), 2: FakePool(1)}
    scheduler = run_job(pools)
    done = sorted(b for pool in pools.values() for b in pool.done)
    assert done == list(range(20)) and scheduler.completed == set(range(20))
    assert all(pool.done for pool in pools.values())


def test_failed_batches_are_retried_and_complete() -> None:
    pools = {0: FakePool(1, fail={3, 7}), 1: FakePool(1, fail={3, 7})}
    scheduler = run_job(pools)
    assert scheduler.completed == set(range(20)) and not scheduler.failed
    assert scheduler.attempt(3) == scheduler.attempt(7) == 1


def test_stop_drains_queues_and_leaves_the_rest_pending() -> None:
    pools = {0: FakePool(1), 1: FakePool(1)}
    scheduler = run_job(pools, stop_after=2)
    assert scheduler.stop_reason == "test" and not scheduler.in_flight
    left = {b.batch_id for b in scheduler.pending}
    assert left and left.isdisjoint(scheduler.completed)
    assert left | scheduler.completed == set(range(20))


def test_worker_keeps_window_assigned_and_hands_back_queue_on_drain() -> None:
    sent: list = []
    pool = FakePool(1)
    worker = RankWorker(pool, sent.append, window=3, rank=1)
    worker.start()
    assert sent == [Request(3)]
    batches = make_plan([SourceFile("a", 30)], 10).batches
    for batch in batches:
        worker.handle(Assign(batch))
    assert pool.busy == [0] and len(worker.queue) == 2
    worker.handle(Drain())
    assert sent[-1] == Returned((1, 2))
    worker.poll(0.0)
    assert sent[-1] == Completed(0) and not pool.busy


def test_failure_reported_with_its_error() -> None:
    sent: list = []
    worker = RankWorker(FakePool(1, fail={0}), sent.append, window=1, rank=2)
    worker.handle(Assign(make_plan([SourceFile("a", 10)], 10).batches[0]))
    worker.poll(0.0)
    assert sent == [Failed(0, "boom", "")] and worker.stats.failures == 1


def test_message_tags_are_distinct() -> None:
    kinds = [Request, Completed, Failed, StopRequested, Returned, Finished, Assign, Drain, Stop]
    assert len({k.tag for k in kinds}) == len(kinds)
