"""Planning: every row in exactly one batch, in order, aligned where sensible."""

from __future__ import annotations

import random

import pytest

from mpiscore.plan import SourceFile, cut_rows, make_plan


def covers(ranges: list[tuple[int, int]], rows: int) -> bool:
    starts = [a for a, _ in ranges]
    stops = [b for _, b in ranges]
    return (not ranges and rows == 0) or (
        starts[0] == 0 and stops[-1] == rows and starts[1:] == stops[:-1]
        and all(a < b for a, b in ranges))


def test_regular_units_smaller_than_target_are_packed_whole() -> None:
    assert cut_rows(10, 3, 1) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert cut_rows(10, 5, 2) == [(0, 4), (4, 8), (8, 10)]  # 5 rows rounded down to 2 chunks


def test_units_larger_than_target_are_split_evenly() -> None:
    assert cut_rows(10, 3, 4) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_row_groups_packed_up_to_target() -> None:
    assert cut_rows(10, 4, (2, 2, 5, 1)) == [(0, 4), (4, 6), (6, 9), (9, 10)]


def test_no_rows_no_batches() -> None:
    assert cut_rows(0, 4, 1) == []


@pytest.mark.parametrize("seed", range(200))
def test_random_layouts_cover_every_row_once(seed: int) -> None:
    rng = random.Random(seed)
    rows, target = rng.randint(0, 500), rng.randint(1, 64)
    units: int | tuple[int, ...]
    if rng.random() < 0.5:
        units = rng.randint(1, 100)
        biggest = max(target, -(-units // -(-units // target)))
    else:
        sizes, left = [], rows
        while left:
            sizes.append(min(left, rng.randint(1, 90)))
            left -= sizes[-1]
        units = tuple(sizes)
        biggest = max([target, *(-(-u // -(-u // target)) for u in sizes)])
    ranges = cut_rows(rows, target, units)
    assert covers(ranges, rows)
    assert all(b - a <= biggest for a, b in ranges)


def test_plan_spans_files_in_order_without_crossing_them() -> None:
    files = [SourceFile("a", 5), SourceFile("b", 0), SourceFile("c", 7, 4)]
    plan = make_plan(files, 3)
    assert [b.batch_id for b in plan.batches] == list(range(len(plan.batches)))
    assert [(b.file_index, b.start, b.stop) for b in plan.batches] == [
        (0, 0, 3), (0, 3, 5), (2, 0, 2), (2, 2, 4), (2, 4, 7)]
    assert [b.global_start for b in plan.batches] == [0, 3, 5, 7, 9]
    assert plan.batches[-1].global_stop == plan.total_rows == 12


def test_plan_json_lists_every_batch() -> None:
    plan = make_plan([SourceFile("a", 10)], 4)
    info = plan.to_json()
    assert info["batches"] == [[0, 0, 0, 4], [1, 0, 4, 8], [2, 0, 8, 10]]
    assert info["total_rows"] == 10
