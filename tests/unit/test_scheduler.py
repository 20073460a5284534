"""The scheduler state machine, stepped by hand: assignment, retries, budget, stops."""

from __future__ import annotations

import pytest

from mpiscore.plan import SourceFile, make_plan
from mpiscore.schedule import Attempt, FailurePolicy, Scheduler


def scheduler(batches: int = 4, **policy) -> Scheduler:
    plan = make_plan([SourceFile("a", 10 * batches)], 10)
    return Scheduler.for_batches(plan.batches, plan.total_rows, FailurePolicy(**policy))


def test_batches_go_out_in_row_order_and_complete() -> None:
    s = scheduler(2)
    first, second = s.assign(1), s.assign(2)
    assert (first.batch_id, second.batch_id) == (0, 1)
    assert s.assign(1) is None and not s.finished
    s.complete(0, 1)
    s.complete(1, 2)
    assert s.finished and s.completed == {0, 1}


def test_completion_by_the_wrong_rank_is_refused() -> None:
    s = scheduler()
    s.assign(1)
    with pytest.raises(RuntimeError, match="assigned to 1"):
        s.complete(0, 2)


def test_failed_batch_is_retried_on_another_rank_first() -> None:
    s = scheduler(3)
    s.assign(1)
    assert s.fail(0, Attempt(1, "boom")) is False
    assert s.assign(1).batch_id == 1  # rank 1 failed batch 0: it gets new work
    assert s.assign(2).batch_id == 0  # rank 2 gets the retry
    assert s.attempt(0) == 1


def test_retry_falls_back_to_the_same_rank_when_nothing_else_runs() -> None:
    s = scheduler(1)
    s.assign(1)
    s.fail(0, Attempt(1, "boom"))
    assert s.assign(1).batch_id == 0


def test_given_up_after_max_retries_and_budget_stops_the_job() -> None:
    s = scheduler(4, max_retries=1, error_threshold=0)
    for _ in range(2):
        batch = s.assign(1) if s.attempt(0) == 0 else s.assign(2)
        given_up = s.fail(batch.batch_id, Attempt(1 if s.attempt(0) == 0 else 2, "boom"))
    assert given_up and s.failed_rows == 10
    assert s.stop_reason.startswith("error budget exceeded: 1 batches")
    assert s.assign(1) is None and s.finished


def test_budget_in_rows() -> None:
    s = scheduler(10, max_retries=0, error_threshold=-1, allowed_failed_percent=15)
    s.assign(1)
    s.fail(0, Attempt(1, "x"))
    assert s.stop_reason is None
    s.assign(1)
    s.fail(1, Attempt(1, "x"))
    assert "20 of 100 rows failed" in s.stop_reason


def test_stop_hands_out_nothing_and_waits_for_in_flight() -> None:
    s = scheduler(3)
    s.assign(1)
    s.stop("SIGTERM on rank 0")
    assert s.assign(2) is None and not s.finished
    s.give_back(0, 1)
    assert s.finished and [b.batch_id for b in s.pending] == [0, 1, 2]
