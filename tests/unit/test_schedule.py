"""schedule.py: the Scheduler stepped by hand."""

from __future__ import annotations

import pytest

from mpiscore.plan import SourceFile, make_plan
from mpiscore.schedule import (
    MADE_AHEAD,
    RETRY_LOOKAHEAD,
    Attempt,
    BatchIds,
    FailurePolicy,
    Scheduler,
)


def scheduler(batches: int = 3, rows: int = 10, **policy: object) -> Scheduler:
    plan = make_plan([SourceFile("x.h5", batches * rows)], rows)
    assert len(plan.batches) == batches
    return Scheduler.for_batches(plan.batches, plan.total_rows, FailurePolicy(**policy))


def test_assign_complete_step_by_step() -> None:
    s = scheduler(3)
    assert not s.finished
    first = s.assign(1)
    assert first is not None and first.batch_id == 0 and s.in_flight == {0: (first, 1)}
    second = s.assign(2)
    assert second is not None and second.batch_id == 1
    assert s.complete(0, 1) == first
    assert s.completed == {0} and set(s.in_flight) == {1} and not s.finished
    third = s.assign(1)
    assert third is not None and third.batch_id == 2
    s.complete(2, 1)
    assert not s.finished  # batch 1 still in flight
    s.complete(1, 2)
    assert s.finished and s.completed == {0, 1, 2} and not s.in_flight


def test_assign_returns_none_when_nothing_is_left() -> None:
    s = scheduler(1)
    assert s.assign(0) is not None
    assert s.assign(0) is None
    assert s.assign(5) is None


def test_empty_scheduler_is_finished_at_once() -> None:
    s = Scheduler.for_batches([], 0)
    assert s.assign(0) is None and s.finished


def test_completing_a_batch_of_another_rank_raises() -> None:
    s = scheduler()
    s.assign(1)
    with pytest.raises(RuntimeError, match="assigned to 1"):
        s.complete(0, 2)


def test_completing_an_unassigned_batch_raises() -> None:
    s = scheduler()
    with pytest.raises(RuntimeError, match="batch 0 reported by rank 1"):
        s.complete(0, 1)
    s.assign(1)
    s.complete(0, 1)
    with pytest.raises(RuntimeError):
        s.complete(0, 1)  # twice


def test_failed_batch_is_retried_on_another_rank_first() -> None:
    s = scheduler(3, max_retries=2)
    s.assign(1)
    assert s.fail(0, Attempt(1, "boom")) is False
    assert s.attempt(0) == 1
    again = s.assign(1)  # rank 1 gets new work, not the batch that failed there
    assert again is not None and again.batch_id == 1
    retried = s.assign(2)
    assert retried is not None and retried.batch_id == 0


def test_retry_goes_back_to_the_same_rank_when_no_other_is_busy() -> None:
    s = scheduler(1, max_retries=1)
    s.assign(1)
    s.fail(0, Attempt(1, "boom"))
    retried = s.assign(1)
    assert retried is not None and retried.batch_id == 0
    s.complete(0, 1)
    assert s.finished and not s.failed


def test_batch_given_up_after_max_retries_and_budget_stops_the_job() -> None:
    s = scheduler(3, max_retries=1, error_threshold=0)
    s.assign(1)
    assert s.fail(0, Attempt(1, "first")) is False
    assert s.assign(2).batch_id == 0
    assert s.fail(0, Attempt(2, "second")) is True
    assert 0 in s.failed and s.failed_rows == 10
    assert s.stop_reason is not None and s.stop_reason.startswith("error budget")
    assert s.assign(1) is None and s.finished
    assert [a.error for a in s.attempts[0]] == ["first", "second"]


def test_failures_within_threshold_let_the_job_go_on() -> None:
    s = scheduler(3, max_retries=0, error_threshold=10)  # items: batch 0's 10 rows
    s.assign(1)
    assert s.fail(0, Attempt(1, "boom")) is True
    assert s.stop_reason is None
    assert s.assign(1).batch_id == 1
    s.complete(1, 1)
    s.assign(1)
    s.complete(2, 1)
    assert s.finished and s.completed == {1, 2} and set(s.failed) == {0}


def test_allowed_failed_percent_counts_rows() -> None:
    policy = FailurePolicy(max_retries=0, error_threshold=-1, allowed_failed_percent=20)
    assert policy.exceeded(5, 20, 100) is None
    assert policy.exceeded(5, 21, 100) is not None
    assert FailurePolicy(error_threshold=-1).exceeded(1000, 1000, 1000) is None
    assert FailurePolicy(error_threshold=2).exceeded(1, 3, 100) is not None


def test_error_threshold_counts_items_and_the_batch_threshold_batches() -> None:
    """Azure's error_threshold (items) and mini_batch_error_threshold (batches)."""
    assert FailurePolicy(error_threshold=30).exceeded(3, 30, 100) is None
    items = FailurePolicy(error_threshold=29, item="file").exceeded(3, 30, 100)
    assert items is not None and "30 files failed for good (in 3 batches)" in items
    assert FailurePolicy(error_threshold=-1, mini_batch_error_threshold=3).exceeded(
        3, 30, 100) is None
    batches = FailurePolicy(error_threshold=-1, mini_batch_error_threshold=2).exceeded(3, 3, 9)
    assert batches is not None and "--mini-batch-error-threshold 2" in batches


def test_results_short_of_items_count_against_the_budget() -> None:
    s = scheduler(3, max_retries=0, error_threshold=4)
    s.assign(1)
    s.complete(0, 1, failed_items=4)
    assert s.stop_reason is None and s.failed_rows == 4 and not s.failed
    s.assign(1)
    s.complete(1, 1, failed_items=1)
    assert s.stop_reason is not None and "5 rows failed for good" in s.stop_reason


def test_give_back_requeues_in_front_without_counting_a_try() -> None:
    s = scheduler(3)
    s.assign(1)
    s.assign(1)
    s.give_back(1, 1)
    assert s.attempt(1) == 0
    assert s.assign(2).batch_id == 1


def test_stop_hands_out_nothing_but_lets_in_flight_batches_report() -> None:
    s = scheduler(3)
    s.assign(1)
    s.stop("signal")
    assert s.assign(2) is None and not s.finished
    s.complete(0, 1)
    assert s.finished and s.stop_reason == "signal"
    assert [b.batch_id for b in s.pending] == [1, 2]


def take_while_allowed(s: Scheduler, rank: int, ranks: int, wanted: int) -> int:
    taken = 0
    while taken < wanted and s.may_take(rank, ranks) and s.assign(rank) is not None:
        taken += 1
    return taken


def test_tail_batches_are_shared_not_queued_behind_one_rank() -> None:
    """7 batches, 2 ranks asking for 4 each: 3 and 2 are handed out, 2 stay for
    whichever rank frees up first."""
    s = scheduler(batches=7)
    assert take_while_allowed(s, 0, 2, 4) == 3
    assert take_while_allowed(s, 1, 2, 4) == 2
    assert not s.may_take(1, 2)
    s.complete(next(b for b, r in s.in_flight.values() if r == 1).batch_id, 1)
    assert take_while_allowed(s, 1, 2, 4) == 1


def test_early_on_and_alone_a_rank_takes_its_whole_window() -> None:
    assert take_while_allowed(scheduler(batches=100), 0, 2, 4) == 4
    assert take_while_allowed(scheduler(batches=3), 0, 1, 4) == 3
    s = scheduler(batches=1)
    assert take_while_allowed(s, 0, 8, 4) == 1  # a rank holding nothing may take one


def test_assign_many_hands_out_a_bundle_in_row_order_up_to_the_fair_share() -> None:
    s = scheduler(batches=20)
    assert [b.batch_id for b in s.assign_many(1, 4, 2)] == [0, 1, 2, 3]
    assert [b.batch_id for b in s.assign_many(2, 4, 2)] == [4, 5, 6, 7]
    assert s.assign_many(1, 0, 2) == []
    # 12 left for 2 ranks: a rank may take one more while it holds at most half of
    # what is left (rounded up): rank 1 takes 8 (holding 4 of 12), 9 (5 of 11), not 10
    assert [b.batch_id for b in s.assign_many(1, 10, 2)] == [8, 9]
    assert s.held[1] == 6 and s.fair_share(2) == 5 and not s.may_take(1, 2)
    assert s.has_work


def test_retries_are_looked_for_only_near_the_front_of_their_queue() -> None:
    """A rank on which many batches failed gets a new batch rather than a scan of
    every queued retry; the others still take the retries."""
    batches = RETRY_LOOKAHEAD + 5
    s = scheduler(batches=batches + 2, max_retries=1)
    for _ in range(batches):
        s.assign(1)
    for batch_id in range(batches):
        s.fail(batch_id, Attempt(1, "boom"))
    assert len(s.retries) == batches
    fresh = s.assign(1)
    assert fresh is not None and fresh.batch_id == batches  # not a retry that failed there
    retry = s.assign(2)
    assert retry is not None and retry.batch_id == 0


def test_failed_rows_are_counted_as_they_happen() -> None:
    s = scheduler(3, max_retries=0, error_threshold=-1)
    s.assign(1)
    s.fail(0, Attempt(1, "boom"))
    s.assign(1)
    s.complete(1, 1, failed_items=3)
    assert s.failed_rows == 13
    assert not s.has_work or s.pending
    s.stop("signal")
    assert not s.has_work


def test_a_resume_skips_the_batches_done_and_counts_them_completed() -> None:
    plan = make_plan([SourceFile("x.h5", 100)], 10)
    s = Scheduler.for_batches(plan.batches, plan.total_rows, done={0, 1, 4, 9})
    assert s.completed == {0, 1, 4, 9} and len(s.pending) == 6
    assert [b.batch_id for b in s.pending] == [2, 3, 5, 6, 7, 8]
    assert s.pending.rows() == 60 and s.fair_share(2) == 3
    taken = s.assign_many(1, 4, 1)
    assert [b.batch_id for b in taken] == [2, 3, 5, 6] and taken[2] == plan.batches[5]
    s.give_back(5, 1)
    assert [b.batch_id for b in s.pending] == [5, 7, 8] and s.pending.rows() == 30
    assert [s.assign(1).batch_id for _ in range(3)] == [5, 7, 8]  # type: ignore[union-attr]
    assert s.assign(1) is None and not s.has_work
    for batch_id in (2, 3, 5, 6, 7, 8):
        s.complete(batch_id, 1)
    assert s.finished and s.completed == set(range(10))


def test_pending_batches_are_a_cursor_over_the_plan_not_a_copy() -> None:
    """Rank 0's memory does not grow with the plan: the scheduler holds the plan's
    BatchTable and a position, its done batches as a bitmap, and Batch objects only
    for what is in flight or was given back."""
    plan = make_plan([SourceFile("x.h5", 100_000)], 1)
    s = Scheduler.for_batches(plan.batches, plan.total_rows, done=range(0, 100_000, 2))
    assert s.pending.batches is plan.batches and not s.pending.front
    assert isinstance(s.completed, BatchIds) and len(s.completed.bits) == 12_500
    assert len(s.pending) == 50_000 and s.pending.rows() == 50_000
    assert [b.batch_id for b in s.assign_many(0, 3, 1)] == [1, 3, 5]
    assert set(s.in_flight) == {1, 3, 5} and s.pending.next == 7
    fresh = Scheduler.for_batches(plan.batches, plan.total_rows)
    assert [b.batch_id for b in fresh.assign_many(0, 1000, 1)] == list(range(1000))
    assert len(fresh.pending.front) < MADE_AHEAD and len(fresh.pending) == 99_000
    assert fresh.pending.rows() == 99_000 and next(iter(fresh.pending)).batch_id == 1000


def test_batch_ids_behave_as_a_set() -> None:
    ids = BatchIds(20, [3, 17, 3])
    assert len(ids) == 2 and 3 in ids and 4 not in ids and -1 not in ids and 99 not in ids
    assert ids == {3, 17} and list(ids) == [3, 17] and ids != {3}
    ids.add(0)
    ids.discard(17)
    ids.discard(5)
    assert sorted(ids) == [0, 3] and {1, 3} | ids == {0, 1, 3} and not {1} & ids
    with pytest.raises(ValueError, match="not in a plan of 20 batches"):
        ids.add(20)
