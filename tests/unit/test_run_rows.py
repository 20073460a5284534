"""scoring/scorers/run_rows.py: which slice size a scoring process keeps, from the
seconds its batches took (the sizes are real onnxruntime runs in test_score.py; here,
the choice alone, as the times would make it)."""

from __future__ import annotations

import pytest

from mpiscore.scoring.scorers.run_rows import CANDIDATES, WHOLE, RunRows

ROWS = 16384


def measure(per_row: dict[int, float], rows: int = ROWS, batches: int = 8) -> list[int]:
    """Score ``batches`` batches of ``rows`` rows, each taking the seconds a row that
    ``per_row`` gives for the size it is run at (WHOLE: the whole batch); the sizes
    used, batch by batch."""
    slicing = RunRows(None)
    used = []
    for _ in range(batches):
        size = slicing.size(rows)
        used.append(size)
        slicing.timed(rows, rows * per_row[WHOLE if size == rows else size])
    return used


def test_the_search_starts_at_1024_looks_down_then_up_and_keeps_the_larger_of_equals() -> None:
    """The light MLP's times: 256 is no better than 1,024 by more than the margin, so the
    search turns up; 4,096 is slower, so it stops; 1,024 is kept (256 is as fast, but
    runs four times as often)."""
    times = {WHOLE: 18.8, 4096: 17.7, 1024: 16.4, 256: 16.6}
    assert measure(times) == [1024, 1024, 256, 4096, 1024, 1024, 1024, 1024]


def test_a_model_fastest_whole_climbs_to_whole_batches() -> None:
    times = {WHOLE: 1.0, 4096: 1.3, 1024: 2.0, 256: 5.0}
    assert measure(times) == [1024, 1024, 256, 4096, ROWS, ROWS, ROWS, ROWS]


def test_sizes_within_the_margin_keep_the_larger_one() -> None:
    times = {WHOLE: 10.0, 4096: 9.0, 1024: 8.9, 256: 8.8}
    assert measure(times)[-1] == 4096


def test_a_smaller_size_clearly_faster_ends_the_search_there() -> None:
    """The heavy MLP's: 256 beats 1,024 by 10%, and there is nothing smaller; whole
    batches are never run at all."""
    times = {WHOLE: 282.0, 4096: 214.0, 1024: 199.0, 256: 179.0}
    assert measure(times) == [1024, 1024, 256, 256, 256, 256, 256, 256]


def test_only_sizes_below_the_batch_are_tried() -> None:
    times = {WHOLE: 2.0, 256: 1.0}
    assert measure(times, rows=1000) == [1000, 256, 1000, 256, 256, 256, 256, 256]


def test_batches_too_small_to_slice_are_run_whole_and_not_measured() -> None:
    slicing = RunRows(None)
    for _ in range(5):
        assert slicing.size(CANDIDATES[0]) == CANDIDATES[0]
        slicing.timed(CANDIDATES[0], 1.0)
    assert slicing.measuring and not slicing.warmed


def test_a_batch_no_larger_than_the_size_being_tried_runs_whole_and_is_not_counted() -> None:
    """A file's short last batch comes while 4,096 is being tried: it runs whole, so its
    time says nothing of 4,096, which is timed on the next batch large enough."""
    slicing = RunRows(None)
    for rows, seconds in [(ROWS, 1.0), (ROWS, 1.0), (ROWS, 1.0)]:
        slicing.timed(rows, seconds)
    assert slicing.trying == 4096 and slicing.size(3000) == 3000
    slicing.timed(3000, 0.01)  # a tenth of the time a row: it would win, unmeasured
    assert 4096 not in slicing.tried and slicing.measuring
    slicing.timed(ROWS, 0.9)
    assert slicing.tried[4096] == pytest.approx(0.9 / ROWS)


@pytest.mark.parametrize("fixed", [WHOLE, 1, 300])
def test_a_fixed_size_is_used_as_given_without_measuring(fixed: int) -> None:
    slicing = RunRows(fixed)
    assert not slicing.measuring
    assert slicing.size(ROWS) == (ROWS if fixed == WHOLE else fixed)
    assert slicing.size(100) == (100 if fixed in (WHOLE, 300) else 1)

