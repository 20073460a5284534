"""coordinator.py and worker.py: the real loops of rank 0 and of the other ranks, in threads.

Rank 0 is wired by ``coordinator.wire``, as the job wires it; messages between
ranks travel through the library's in-process ``world.Loopback`` instead of
MPI; each rank's scoring processes are a fake pool that "scores" a batch by
recording it. Every thread is joined with a timeout, so a protocol bug fails
the test instead of hanging it.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mpiscore
from mpiscore.plan import Batch, SourceFile, make_plan
from mpiscore.rank.coordinator import Coordinator, wire_rank_zero
from mpiscore.rank.messages import (
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
from mpiscore.rank.pool import Outcome
from mpiscore.rank.worker import RankWorker, work
from mpiscore.rank.world import LocalWorld, Loopback, WorkerLink, as_world
from mpiscore.schedule import FailurePolicy, Scheduler
from mpiscore.wire import StageTimes

PACKAGE = Path(mpiscore.__file__).parent

TIMEOUT = 10.0
TIMES = StageTimes(0.0, 0.0, 0.0)


@dataclass
class Record:
    """What happened, shared by every thread (list.append is atomic)."""

    scored: list[tuple[int, int, int]] = field(default_factory=list)  # rank, batch, attempt
    failed: list[tuple[int, int, int]] = field(default_factory=list)
    received: dict[int, list[Message]] = field(default_factory=dict)
    outstanding: Counter = field(default_factory=Counter)
    most_outstanding: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def assigned(self, rank: int) -> None:
        with self.lock:
            self.outstanding[rank] += 1
            self.most_outstanding[rank] = max(self.most_outstanding[rank],
                                              self.outstanding[rank])

    def reported(self, rank: int, message: Message) -> None:
        if isinstance(message, Completed | Failed):
            with self.lock:
                self.outstanding[rank] -= len(message.batch_ids) \
                    if isinstance(message, Completed) else 1


class FakePool:
    """``procs`` pretend scoring processes; ``fails(rank, batch_id, attempt)`` says which fail."""

    def __init__(self, rank: int, procs: int, record: Record,
                 fails: Callable[[int, int, int], bool], seconds: float) -> None:
        self.rank, self.record, self.fails, self.seconds = rank, record, fails, seconds
        self.slots: list[tuple[Batch, int] | None] = [None] * procs

    @property
    def idle(self) -> list[int]:
        return [i for i, slot in enumerate(self.slots) if slot is None]

    @property
    def running_low(self) -> bool:
        return bool(self.idle)

    @property
    def busy(self) -> list[int]:
        return [i for i, slot in enumerate(self.slots) if slot is not None]

    @property
    def holding(self) -> bool:
        return bool(self.busy)

    def hand_over(self) -> None:
        pass

    def deepen(self, seconds_per_batch: float) -> int:
        return 0

    def submit_to(self, proc: int, batch: Batch, attempt: int) -> None:
        assert self.slots[proc] is None
        self.slots[proc] = (batch, attempt)

    def poll(self, timeout: float) -> list[Outcome]:
        if not self.busy:
            time.sleep(min(timeout, 1e-3))
            return []
        time.sleep(self.seconds)
        outcomes = []
        for proc in self.busy:
            batch, attempt = self.slots[proc]  # type: ignore[misc]
            self.slots[proc] = None
            if self.fails(self.rank, batch.batch_id, attempt):
                self.record.failed.append((self.rank, batch.batch_id, attempt))
                outcomes.append(Outcome(batch, False, f"boom on rank {self.rank}"))
            else:
                self.record.scored.append((self.rank, batch.batch_id, attempt))
                outcomes.append(Outcome(batch, True, times=TIMES))
        return outcomes

    def abandon(self) -> list[Batch]:
        taken = [slot[0] for slot in self.slots if slot is not None]
        self.slots = [None] * len(self.slots)
        return taken


class RecordedLink:
    """A worker's link that records what the worker receives and reports."""

    def __init__(self, link: WorkerLink, rank: int, record: Record) -> None:
        self.link, self.rank, self.record = link, rank, record
        record.received[rank] = []

    def poll(self) -> Message | None:
        message = self.link.poll()
        if message is not None:
            self.record.received[self.rank].append(message)
            if isinstance(message, Assign):
                for _ in message.batches:
                    self.record.assigned(self.rank)
        return message

    def send(self, message: Message) -> None:
        self.record.reported(self.rank, message)
        self.link.send(message)


@dataclass
class Outcomes:
    scheduler: Scheduler
    record: Record
    errors: dict[int, BaseException]
    batches: tuple[Batch, ...]


def start_thread(target: Callable[[], None], rank: int, errors: dict[int, BaseException]
                 ) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors[rank] = exc

    thread = threading.Thread(target=body, name=f"rank-{rank}", daemon=True)
    thread.start()
    return thread


def run_job(ranks: int = 4, batches: int = 40, window: int = 2, procs: int = 1,
            fails: Callable[[int, int, int], bool] = lambda r, b, a: False,
            policy: FailurePolicy | None = None, seconds: float = 2e-4,
            stop_on: Callable[[int, Record], str | None] = lambda rank, record: None
            ) -> Outcomes:
    """Rank 0 serves in one thread, ranks 1.. work in theirs, all linked in process."""
    record = Record()
    plan = make_plan([SourceFile("a.h5", 5 * batches)], 5)
    scheduler = Scheduler.for_batches(plan.batches, plan.total_rows, policy)
    hub = Loopback(ranks)
    errors: dict[int, BaseException] = {}

    def worker(rank: int, link: WorkerLink) -> RankWorker:
        return RankWorker(FakePool(rank, procs, record, fails, seconds),
                          RecordedLink(link, rank, record), window, rank)

    threads = []
    for rank in range(1, ranks):
        own = worker(rank, hub.worker_link(rank))
        threads.append(start_thread(
            lambda own=own, rank=rank: work(own, lambda: stop_on(rank, record)), rank, errors))
    rank_zero = wire_rank_zero(scheduler, hub, lambda link: worker(0, link))
    threads.append(start_thread(lambda: rank_zero.serve(lambda: stop_on(0, record)), 0, errors))
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [thread.name for thread in threads if thread.is_alive()]
    assert not hung, f"still running after {TIMEOUT}s: {hung}"
    return Outcomes(scheduler, record, errors, plan.batches)


def check_clean_end(out: Outcomes, ranks: int) -> None:
    """No errors, nothing in flight, every worker rank told Stop as its last message."""
    assert not out.errors, out.errors
    assert not out.scheduler.in_flight
    for rank in range(1, ranks):
        assert out.record.received[rank], f"rank {rank} received nothing"
        assert isinstance(out.record.received[rank][-1], Stop)
        assert sum(isinstance(m, Stop) for m in out.record.received[rank]) == 1


@pytest.mark.parametrize(("window", "procs"), [(1, 1), (3, 1), (3, 2)])
def test_every_batch_scored_exactly_once(window: int, procs: int) -> None:
    out = run_job(ranks=4, batches=40, window=window, procs=procs)
    check_clean_end(out, 4)
    scored = sorted(batch for _, batch, _ in out.record.scored)
    assert scored == list(range(40))
    assert out.scheduler.completed == set(range(40))
    assert out.scheduler.stop_reason is None and not out.scheduler.failed


@pytest.mark.parametrize("window", [1, 3])
def test_no_rank_holds_more_than_its_window(window: int) -> None:
    out = run_job(ranks=4, batches=40, window=window)
    check_clean_end(out, 4)
    assert max(out.record.most_outstanding.values()) <= window
    assert all(count == 0 for count in out.record.outstanding.values())


def test_every_rank_gets_work() -> None:
    out = run_job(ranks=4, batches=60, window=1, seconds=2e-3)
    check_clean_end(out, 4)
    assert {rank for rank, _, _ in out.record.scored} == {0, 1, 2, 3}


def test_rank_zero_alone() -> None:
    out = run_job(ranks=1, batches=12, window=2)
    assert not out.errors
    assert sorted(batch for _, batch, _ in out.record.scored) == list(range(12))


def test_transient_failures_are_retried_and_every_batch_ends_once() -> None:
    out = run_job(fails=lambda rank, batch, attempt: batch in (2, 9) and attempt == 0,
                  policy=FailurePolicy(max_retries=1))
    check_clean_end(out, 4)
    assert sorted(batch for _, batch, _ in out.record.failed) == [2, 9]
    assert sorted(batch for _, batch, _ in out.record.scored) == list(range(40))
    retried = {batch: attempt for _, batch, attempt in out.record.scored if batch in (2, 9)}
    assert retried == {2: 1, 9: 1}
    assert out.scheduler.completed == set(range(40)) and not out.scheduler.failed


def test_a_batch_failing_everywhere_exhausts_the_budget_and_stops_every_rank() -> None:
    out = run_job(fails=lambda rank, batch, attempt: batch == 5,
                  policy=FailurePolicy(max_retries=2, error_threshold=0), seconds=1e-3)
    check_clean_end(out, 4)
    s = out.scheduler
    assert s.stop_reason is not None and s.stop_reason.startswith("error budget")
    assert set(s.failed) == {5} and len(s.attempts[5]) == 3
    assert [attempt for _, batch, attempt in out.record.failed] == [0, 1, 2]
    done = sorted(batch for _, batch, _ in out.record.scored)
    assert done == sorted(s.completed) and len(set(done)) == len(done)
    left = {b.batch_id for b in s.pending} | {b.batch_id for b in s.retries}
    assert left | s.completed | {5} == set(range(40))
    assert not left & s.completed


def test_failures_within_threshold_let_the_job_finish() -> None:
    out = run_job(fails=lambda rank, batch, attempt: batch == 5,
                  policy=FailurePolicy(max_retries=1, error_threshold=-1,
                                                       mini_batch_error_threshold=1))
    check_clean_end(out, 4)
    assert out.scheduler.stop_reason is None
    assert set(out.scheduler.failed) == {5}
    assert out.scheduler.completed == set(range(40)) - {5}


def test_stop_requested_on_a_worker_rank_drains_every_rank() -> None:
    def stop_on(rank: int, record: Record) -> str | None:
        return "SIGTERM on rank 2" if rank == 2 and len(record.scored) >= 6 else None

    out = run_job(batches=200, window=3, seconds=1e-3, stop_on=stop_on)
    check_clean_end(out, 4)
    s = out.scheduler
    assert s.stop_reason == "SIGTERM on rank 2"
    done = sorted(batch for _, batch, _ in out.record.scored)
    assert done == sorted(s.completed) and len(set(done)) == len(done)
    left = {b.batch_id for b in s.pending}
    assert left and not left & s.completed
    assert left | s.completed == set(range(200))


def test_finished_is_the_last_message_of_every_worker() -> None:
    hub = Loopback(2)
    worker = RankWorker(FakePool(1, 1, Record(), lambda r, b, a: False, 0.0), hub.worker_link(1),
                        2, 1)
    hub.send(1, Stop())
    errors: dict[int, BaseException] = {}
    thread = start_thread(lambda: work(worker, lambda: None), 1, errors)
    thread.join(TIMEOUT)
    assert not thread.is_alive() and not errors
    sent = []
    while (received := hub.poll()) is not None:
        sent.append(received)
    assert sent[-1] == (1, Finished())


def test_a_world_of_one_process() -> None:
    world = as_world(None)
    assert isinstance(world, LocalWorld) and as_world(world) is world
    assert (world.rank, world.size, world.node_local()) == (0, 1, (0, 1))
    assert world.broadcast("x") == "x" and world.gather(3) == [3]
    assert world.coordinator_link() is None
    world.barrier()


def test_only_the_world_imports_mpi4py() -> None:
    importing = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if re.search(r"^\s*(from|import) mpi4py", path.read_text(), re.MULTILINE)}
    assert importing == {"rank/world.py"}


# The Coordinator stepped by hand: ranks simulated by a link that keeps what it is sent.

class Inboxes:
    """A coordinator link to simulated ranks: what each was sent, in order."""

    def __init__(self) -> None:
        self.sent: dict[int, list[Message]] = {}

    def poll(self) -> None:
        return None

    def send(self, rank: int, message: Message) -> None:
        self.sent.setdefault(rank, []).append(message)

    def take(self, rank: int) -> list[Message]:
        return self.sent.pop(rank, [])


def coordinator(ranks: int, batches: int, policy: FailurePolicy | None = None,
                done: list[int] | None = None) -> tuple[Coordinator, Inboxes]:
    plan = make_plan([SourceFile("a.h5", batches)], 1)
    scheduler = Scheduler.for_batches(plan.batches, plan.total_rows, policy)
    inboxes = Inboxes()
    on_complete = (lambda batches: done.extend(b.batch_id for b in batches)) \
        if done is not None else (lambda batches: None)
    return Coordinator(scheduler, list(range(ranks)), inboxes, inboxes, on_complete), inboxes


def assigned(messages: list[Message]) -> list[int]:
    return [b.batch_id for m in messages if isinstance(m, Assign) for b in m.batches]


def test_a_request_is_answered_with_one_bundle_in_row_order() -> None:
    c, inboxes = coordinator(3, 100)
    c.handle(2, Request(4))
    c.handle(0, Request(3))
    (bundle,) = inboxes.take(2)
    assert isinstance(bundle, Assign) and assigned([bundle]) == [0, 1, 2, 3]
    assert bundle.attempts == (0, 0, 0, 0)
    assert assigned(inboxes.take(0)) == [4, 5, 6]
    c.handle(2, Completed((1,)))
    assert assigned(inboxes.take(2)) == [7]


def test_reports_received_in_a_burst_are_answered_with_one_bundle() -> None:
    c, inboxes = coordinator(2, 100)
    c.handle(1, Request(4))
    assert assigned(inboxes.take(1)) == [0, 1, 2, 3]
    for batch_id in (2, 0, 3):
        c.receive(1, Completed((batch_id,)))
    c.receive(0, Request(2))
    assert inboxes.sent == {}
    assert c.hand_out() and not c.hand_out()
    assert assigned(inboxes.take(1)) == [4, 5, 6] and assigned(inboxes.take(0)) == [7, 8]


def test_a_retry_goes_to_another_rank_and_the_failing_rank_gets_new_work() -> None:
    c, inboxes = coordinator(3, 10, FailurePolicy(max_retries=2))
    c.handle(1, Request(1))
    assert assigned(inboxes.take(1)) == [0]
    c.handle(1, Failed(0, "boom"))
    assert assigned(inboxes.take(1)) == [1]  # not the batch that failed there
    c.handle(2, Request(1))
    (retry,) = inboxes.take(2)
    assert isinstance(retry, Assign) and assigned([retry]) == [0] and retry.attempts == (1,)


def test_a_retry_waits_for_another_rank_unless_no_other_is_busy() -> None:
    """Only a retry left, failed on the rank asking: it waits (parked) while another
    rank is busy, and goes to that one when it asks."""
    c, inboxes = coordinator(2, 2, FailurePolicy(max_retries=2))
    c.handle(0, Request(1))
    c.handle(1, Request(1))
    assert assigned(inboxes.take(0)) == [0] and assigned(inboxes.take(1)) == [1]
    c.handle(0, Failed(0, "boom"))
    assert inboxes.take(0) == [] and c.starved == {0}
    c.handle(1, Completed((1,)))
    assert assigned(inboxes.take(1)) == [0] and inboxes.take(0) == []
    c.handle(1, Completed((0,)))
    assert c.finished and c.scheduler.completed == {0, 1}


def test_a_retry_goes_back_where_it_failed_when_no_other_rank_is_busy() -> None:
    c, inboxes = coordinator(3, 1, FailurePolicy(max_retries=2))
    c.handle(0, Request(2))
    assert assigned(inboxes.take(0)) == [0]
    c.handle(0, Failed(0, "boom"))  # ranks 1 and 2 hold nothing (they never asked)
    (retry,) = inboxes.take(0)
    assert isinstance(retry, Assign) and assigned([retry]) == [0] and retry.attempts == (1,)


def test_at_the_tail_a_rank_holding_its_share_waits_and_the_first_to_free_up_gets_more() -> None:
    c, inboxes = coordinator(2, 9)
    c.handle(0, Request(6))
    assert assigned(inboxes.take(0)) == [0, 1, 2, 3] and c.held_back == {0}
    c.handle(1, Request(6))
    assert assigned(inboxes.take(1)) == [4, 5, 6] and c.held_back == {0, 1}
    c.handle(1, Completed((4,)))
    assert inboxes.take(1) == []  # holds 2, more than its share of the 2 left
    c.handle(1, Completed((5,)))
    assert assigned(inboxes.take(1)) == [7] and inboxes.take(0) == []
    c.handle(0, Completed((0,)))
    c.handle(0, Completed((1,)))
    assert inboxes.take(0) == []
    c.handle(0, Completed((2,)))
    assert assigned(inboxes.take(0)) == [8] and not c.scheduler.pending
    for rank, batch_id in [(0, 3), (0, 8), (1, 6), (1, 7)]:
        c.handle(rank, Completed((batch_id,)))
    assert c.finished and inboxes.sent == {}


def test_batches_coming_back_wake_the_ranks_held_back_when_the_share_grows() -> None:
    c, inboxes = coordinator(2, 5)
    c.handle(0, Request(1))
    c.handle(1, Request(5))
    assert assigned(inboxes.take(0)) == [0] and assigned(inboxes.take(1)) == [1, 2]
    assert c.held_back == {1}
    c.handle(0, Returned((0,)))  # 3 to hand out again: rank 1 may hold 2 + 1
    assert assigned(inboxes.take(1)) == [0] and inboxes.take(0) == []


def test_drain_with_bundles_returns_every_unstarted_batch_to_the_front() -> None:
    c, inboxes = coordinator(3, 30)
    for rank in range(3):
        c.handle(rank, Request(4))
    c.handle(1, Completed((4,)))
    c.handle(2, StopRequested("SIGTERM on rank 2"))
    for rank in range(3):
        messages = inboxes.take(rank)
        assert isinstance(messages[-1], Drain) and sum(isinstance(m, Drain) for m in messages) == 1
    c.handle(1, Returned((5, 6, 7, 12)))
    c.handle(0, Returned((1, 2, 3)))
    c.handle(2, Returned((8, 9, 10, 11)))
    assert not c.finished  # batch 0 is still being scored
    c.handle(0, Completed((0,)))
    assert c.finished and c.scheduler.completed == {0, 4}
    assert [b.batch_id for b in c.scheduler.pending] == [8, 9, 10, 11, 1, 2, 3, 5, 6, 7, 12,
                                                         *range(13, 30)]
    assert all(inboxes.take(rank) == [] for rank in range(3))  # nothing handed out since


@pytest.mark.parametrize("seed", range(12))
def test_no_batch_lost_or_duplicated_under_random_message_orders(seed: int) -> None:
    """Ranks report their batches in random orders, some fail (retried, some given up),
    some ranks send their requests late, and sometimes the job is stopped: every batch
    ends once (completed, given up, or back in the queue at a stop), each completion
    is journalled once, no rank ever holds more than it asked for, and no rank waits
    while there is work it may take."""
    rng = random.Random(seed)
    ranks, batches, window = rng.randint(1, 12), rng.randint(1, 300), rng.randint(1, 6)
    policy = FailurePolicy(max_retries=rng.randint(0, 3), error_threshold=-1)
    journal: list[int] = []
    c, inboxes = coordinator(ranks, batches, policy, journal)
    holding: dict[int, list[int]] = {rank: [] for rank in range(ranks)}
    asked = {rank: 0 for rank in range(ranks)}
    drained: set[int] = set()
    stop_after = rng.choice([None, rng.randint(0, batches)])
    late = list(range(ranks))
    rng.shuffle(late)
    steps = 0
    burst = rng.random() < 0.5  # receive several messages, then hand out once
    deliver = c.receive if burst else c.handle
    while not c.finished:
        steps += 1
        assert steps < 100 * batches + 1000, "the job does not end"
        if burst and (rng.random() < 0.5 or not any(holding.values())):
            c.hand_out()
        for rank in range(ranks):
            for message in inboxes.take(rank):
                if isinstance(message, Assign):
                    assert len(message.batches) == len(message.attempts) > 0
                    holding[rank].extend(assigned([message]))
                elif isinstance(message, Drain):
                    drained.add(rank)
            assert len(holding[rank]) <= asked[rank]
        if late and (rng.random() < 0.3 or not any(holding.values())):
            rank = late.pop()
            asked[rank] += window
            deliver(rank, Request(window))
            continue
        busy = [rank for rank in range(ranks) if holding[rank]]
        assert busy, "ranks wait with nothing in hand"
        rank = rng.choice(busy)
        if rank in drained and rng.random() < 0.5:
            back = holding[rank][1:]
            holding[rank] = holding[rank][:1]
            asked[rank] -= len(back)
            deliver(rank, Returned(tuple(back)))
            continue
        batch_id = holding[rank].pop(rng.randrange(len(holding[rank])))
        if stop_after is not None and len(journal) >= stop_after:
            deliver(rank, StopRequested("SIGTERM"))
            stop_after = None
        if rng.random() < 0.15:
            deliver(rank, Failed(batch_id, "boom"))
        else:
            deliver(rank, Completed((batch_id,)))
    s = c.scheduler
    assert sorted(journal) == sorted(s.completed) and len(set(journal)) == len(journal)
    left = [b.batch_id for b in s.pending] + [b.batch_id for b in s.retries]
    ended = sorted(list(s.completed) + list(s.failed) + left)
    assert ended == list(range(batches))
    if s.stop_reason is None:
        assert not left and not any(holding.values())


def test_batches_no_word_came_for_long_after_a_stop_are_left_for_resume(monkeypatch) -> None:
    """A rank whose reports of two batches were lost: once the drain is older than the
    grace, they go back to the plan and the stop can finish, instead of waiting for ever."""
    import mpiscore.rank.coordinator as coordinator_module

    c, inboxes = coordinator(2, 10)
    c.handle(1, Request(2))
    assert assigned(inboxes.take(1)) == [0, 1]
    c.handle(0, StopRequested("SIGTERM"))
    assert not c.finished
    c.give_up_overdue(90.0)  # the drain just began: still waiting
    assert not c.finished
    later = coordinator_module.time.monotonic() + 91
    monkeypatch.setattr(coordinator_module.time, "monotonic", lambda: later)
    c.give_up_overdue(90.0)
    assert c.finished and not c.scheduler.in_flight
