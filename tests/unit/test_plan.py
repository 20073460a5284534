"""plan.py: cutting rows into batches and laying files out in the global row space."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from mpiscore.config import BatchSize
from mpiscore.errors import OutputError
from mpiscore.plan import (
    Batch,
    BatchTable,
    PlanWithheld,
    SourceFile,
    cut_rows,
    make_item_plan,
    make_plan,
)
from mpiscore.rank.run_dir import PlanFile


def unit_bounds(rows: int, unit: int | tuple[int, ...]) -> set[int]:
    """Row positions where an alignment unit starts or ends."""
    sizes = [unit] * (rows // unit) + ([rows % unit] if rows % unit else []) \
        if isinstance(unit, int) else list(unit)
    return {0, *itertools.accumulate(sizes)}


def check_cut(ranges: list[tuple[int, int]], rows: int, target: int,
              unit: int | tuple[int, ...]) -> None:
    """Coverage, order, no overlap, size limit and alignment of one cut."""
    assert [r for a, b in ranges for r in range(a, b)] == list(range(rows))
    assert all(0 < b - a <= target for a, b in ranges), ranges
    bounds = unit_bounds(rows, unit)
    for a, b in ranges:
        whole_units = a in bounds and b in bounds
        inside_one_unit = not any(a < u < b for u in bounds)
        assert whole_units or inside_one_unit, (a, b, sorted(bounds))


# ---- cut_rows ------------------------------------------------------------------------------


def test_contiguous_rows_cut_at_target() -> None:
    assert cut_rows(10, 4, 1) == [(0, 4), (4, 8), (8, 10)]


def test_rows_divisible_by_target_leave_no_short_batch() -> None:
    assert cut_rows(12, 4, 1) == [(0, 4), (4, 8), (8, 12)]


def test_small_regular_units_are_packed_whole() -> None:
    # 30 rows per batch of 8-row chunks: 3 whole chunks (24 rows) per batch
    assert cut_rows(100, 30, 8) == [(0, 24), (24, 48), (48, 72), (72, 96), (96, 100)]


def test_unit_equal_to_target() -> None:
    assert cut_rows(25, 10, 10) == [(0, 10), (10, 20), (20, 25)]


def test_large_regular_units_are_split_into_equal_pieces() -> None:
    # 50-row chunks, target 30: each chunk in 2 pieces of 25; a 10-row tail chunk alone
    assert cut_rows(110, 30, 50) == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 110)]


def test_irregular_row_groups_packed_and_split() -> None:
    # 3+4 fit in 10, +5 would not; 20 splits in two; 2+2 are packed
    assert cut_rows(36, 10, (3, 4, 5, 20, 2, 2)) == [
        (0, 7), (7, 12), (12, 22), (22, 32), (32, 36)]


def test_row_groups_equal_to_target_stay_whole() -> None:
    assert cut_rows(30, 10, (10, 10, 10)) == [(0, 10), (10, 20), (20, 30)]


def test_small_groups_not_merged_across_a_large_one() -> None:
    assert cut_rows(17, 10, (2, 13, 2)) == [(0, 2), (2, 8), (8, 15), (15, 17)]


@pytest.mark.parametrize("unit", [1, 7, 100, (0,), ()])
def test_zero_rows_give_no_batches(unit: int | tuple[int, ...]) -> None:
    assert cut_rows(0, 5, unit) == []


def test_empty_row_groups_are_harmless() -> None:
    ranges = cut_rows(9, 4, (0, 3, 0, 6, 0))
    check_cut(ranges, 9, 4, (0, 3, 0, 6, 0))


def test_random_cuts_cover_every_row_once_within_size() -> None:
    rng = random.Random(1234)
    for _ in range(600):
        rows = rng.randrange(0, 400)
        target = rng.randrange(1, 60)
        if rng.random() < 0.5:
            unit: int | tuple[int, ...] = rng.randrange(1, 80)
        else:
            sizes, left = [], rows
            while left:
                size = min(left, rng.randrange(0, 70))
                sizes.append(size)
                left -= size
            unit = tuple(sizes)
        ranges = cut_rows(rows, target, unit)
        check_cut(ranges, rows, target, unit)


def test_random_small_units_are_packed_greedily() -> None:
    """Two neighbouring batches of whole small units could not have been one batch."""
    rng = random.Random(99)
    for _ in range(300):
        target = rng.randrange(2, 40)
        sizes = tuple(rng.randrange(1, target) for _ in range(rng.randrange(1, 30)))
        ranges = cut_rows(sum(sizes), target, sizes)
        check_cut(ranges, sum(sizes), target, sizes)
        starts = dict(zip(itertools.accumulate((0, *sizes)), sizes, strict=False))
        for (a, b), (c, _) in itertools.pairwise(ranges):
            assert (b - a) + starts[c] > target, (ranges, sizes, target)


def test_regular_small_units_fill_batches_to_the_largest_multiple() -> None:
    rng = random.Random(7)
    for _ in range(300):
        rows, unit = rng.randrange(1, 500), rng.randrange(1, 20)
        target = rng.randrange(unit, 60)
        ranges = cut_rows(rows, target, unit)
        check_cut(ranges, rows, target, unit)
        step = (target // unit) * unit
        assert all(b - a == step for a, b in ranges[:-1])


# ---- make_plan -----------------------------------------------------------------------------

FILES = [SourceFile("a.h5", 23, 4), SourceFile("b.h5", 0, 4),
         SourceFile("c.parquet", 31, (6, 6, 19)), SourceFile("d.h5", 5)]


def test_plan_covers_every_row_of_every_file_once_in_order() -> None:
    plan = make_plan(FILES, 7)
    assert plan.total_rows == 23 + 0 + 31 + 5
    seen = [(b.file_index, row) for b in plan.batches for row in range(b.start, b.stop)]
    assert seen == [(i, row) for i, f in enumerate(FILES) for row in range(f.rows)]


def test_plan_global_rows_are_contiguous_and_ids_sequential() -> None:
    plan = make_plan(FILES, 7)
    assert [b.batch_id for b in plan.batches] == list(range(len(plan.batches)))
    assert plan.batches[0].global_start == 0
    for before, after in itertools.pairwise(plan.batches):
        assert after.global_start == before.global_stop
    assert plan.batches[-1].global_stop == plan.total_rows


def test_plan_global_start_is_file_offset_plus_start() -> None:
    plan = make_plan(FILES, 7)
    offsets = list(itertools.accumulate([0] + [f.rows for f in FILES]))
    for batch in plan.batches:
        assert batch.global_start == offsets[batch.file_index] + batch.start
        assert 0 <= batch.start < batch.stop <= FILES[batch.file_index].rows


def test_plan_never_spans_files_and_follows_cut_rows() -> None:
    plan = make_plan(FILES, 7)
    for index, source in enumerate(FILES):
        own = [(b.start, b.stop) for b in plan.batches if b.file_index == index]
        assert own == cut_rows(source.rows, 7, source.unit_rows)


def test_plan_depends_only_on_files_and_batch_size() -> None:
    assert make_plan(FILES, 7) == make_plan(list(FILES), 7)
    assert make_plan(FILES, 7) != make_plan(FILES, 8)
    alone = make_plan(FILES[2:3], 7).batches
    within = [b for b in make_plan(FILES, 7).batches if b.file_index == 2]
    assert [(b.start, b.stop) for b in alone] == [(b.start, b.stop) for b in within]


def test_plan_json_lists_every_batch() -> None:
    plan = make_plan(FILES, 7)
    described = plan.to_json()
    assert described["total_rows"] == 59 and described["batch_rows"] == 7
    assert [f["path"] for f in described["files"]] == [f.path for f in FILES]
    assert described["batches"] == [[b.batch_id, b.file_index, b.start, b.stop]
                                     for b in plan.batches]


def test_plan_of_no_rows_is_empty() -> None:
    plan = make_plan([SourceFile("empty.h5", 0)], 10)
    assert plan.batches == () and plan.total_rows == 0


@pytest.mark.parametrize("rows", [0, -3])
def test_plan_refuses_non_positive_batch_size(rows: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        make_plan(FILES, rows)


def test_batch_rows_and_global_stop() -> None:
    batch = Batch(3, 1, 10, 25, 110)
    assert (batch.rows, batch.global_stop) == (15, 125)


def test_batch_table_holds_columns_and_makes_batches_when_asked() -> None:
    plan = make_plan(FILES, 7)
    table = plan.batches
    assert isinstance(table, BatchTable)
    made = list(table)
    assert [table[i] for i in range(len(table))] == made == table[:]
    assert table[-1] == made[-1] and table[2:4] == made[2:4]
    assert [b.batch_id for b in made] == list(range(len(made)))
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert plan.batch_rows_json(3, 5) == plan.to_json()["batches"][3:5]


def test_a_shared_plan_has_the_file_table_and_the_count_only() -> None:
    plan = make_plan(FILES, 7)
    shared = plan.shared()
    assert shared.files == plan.files and shared.batch_rows == plan.batch_rows
    assert shared.batch_count == plan.batch_count and shared.total_rows == plan.total_rows
    assert plan.holds_batches and not shared.holds_batches
    with pytest.raises(PlanWithheld, match="file table only"):
        shared.batches[0]
    with pytest.raises(PlanWithheld):
        list(shared.batches)  # never an empty iteration: a bug says so
    uneven = tuple(int(size) for size in np.random.default_rng(3).integers(1, 6, 50_000))
    big = make_plan([SourceFile("big.parquet", sum(uneven), unit_rows=uneven)], 4)
    table_bytes = len(pickle.dumps(big.files))  # the shared part: the file table
    assert len(pickle.dumps(big.shared())) < table_bytes + 500
    assert len(pickle.dumps(big)) > table_bytes + 500_000  # 25,794 runs of uneven batches


def test_a_file_cut_at_equal_steps_is_one_run_however_many_batches() -> None:
    """Rank 0 holds, and is sent, a million one-row batches in a few hundred bytes."""
    plan = make_plan([SourceFile("a.h5", 1_000_003), SourceFile("b.h5", 10, unit_rows=4)], 1)
    table = plan.batches
    assert isinstance(table, BatchTable) and len(table) == 1_000_013
    assert len(table.first) == 2 and len(pickle.dumps(plan)) < 1000
    assert table[999_999] == Batch(999_999, 0, 999_999, 1_000_000, 999_999)
    assert table[-1] == Batch(1_000_012, 1, 9, 10, 1_000_012)
    assert table.rows_between(10) == plan.total_rows - 10
    assert table.rows_json(1_000_001, 1_000_004) == [
        [1_000_001, 0, 1_000_001, 1_000_002], [1_000_002, 0, 1_000_002, 1_000_003],
        [1_000_003, 1, 0, 1]]


def test_runs_give_the_batches_one_append_each_would() -> None:
    """Uneven row groups (a run per stretch of equal batches), short last batches and
    several files: every way of reading the table gives the batches as cut."""
    rng = np.random.default_rng(11)
    files = [SourceFile("even.h5", 103, unit_rows=10),
             SourceFile("groups.parquet", 0, unit_rows=tuple(
                 int(size) for size in rng.integers(1, 30, 40))),
             SourceFile("one.h5", 5), SourceFile("empty.h5", 0)]
    files[1] = SourceFile("groups.parquet", sum(files[1].unit_rows), unit_rows=files[1].unit_rows)
    want, offset = [], 0
    for index, source in enumerate(files):
        for start, stop in cut_rows(source.rows, 12, source.unit_rows):
            want.append(Batch(len(want), index, start, stop, offset + start))
        offset += source.rows
    table = make_plan(files, 12).batches
    assert isinstance(table, BatchTable)
    one_each = BatchTable((b.file_index, b.start, b.stop, b.global_start) for b in want)
    for made in (table, one_each):
        assert list(made) == want and [made.batch(i) for i in range(len(want))] == want
        for first in range(0, len(want), 3):
            for stop in (first, first + 1, first + 7, len(want) + 5):
                assert made.take(first, stop) == want[first:stop], (first, stop)
                assert made.rows_between(first, stop) == sum(b.rows for b in want[first:stop])
                assert made.rows_json(first, stop) == [
                    [b.batch_id, b.file_index, b.start, b.stop] for b in want[first:stop]]
    assert len(table.first) < len(want) // 2
    with pytest.raises(IndexError):
        table.batch(len(want))


def test_plan_file_is_written_on_a_thread_and_its_failure_is_an_output_error(
        tmp_path: Path) -> None:
    plan = make_plan(FILES, 7)
    written = PlanFile(tmp_path / "plan.json", {"model": "m.onnx", "batches": 9}, plan)
    written.wait()
    text = (tmp_path / "plan.json").read_text()
    keys = [key for key, _ in json.loads(text, object_pairs_hook=list)]
    assert len(keys) == len(set(keys)), keys  # "batches" once: the list
    assert json.loads(text) == {"model": "m.onnx", "batch_count": 9, **plan.to_json()}
    failing = PlanFile(tmp_path / "missing" / "plan.json", {}, plan)
    failing.thread.join()
    with pytest.raises(OutputError, match="cannot write the job's plan"):
        failing.check()
    failing.check()  # said once




def test_a_batch_pickles_without_looking_up_its_fields(monkeypatch) -> None:
    """Every Assign and Completed carries Batches: pickling them both ways must not
    walk the dataclass's fields (a slotted dataclass's own pickling does, per Batch)."""
    batch = Batch(7, 2, 30, 40, 130)

    def no_fields(_: object) -> None:
        raise AssertionError("dataclasses.fields called while pickling a Batch")

    monkeypatch.setattr(dataclasses, "fields", no_fields)
    assert pickle.loads(pickle.dumps(batch)) == batch


def test_a_table_of_short_runs_lists_its_batches_and_reads_the_same() -> None:
    """Many one-batch files (or file input's batches of files) make one run a batch: past
    RUNS_KEPT runs averaging under SHORT_RUN batches the table lists them, 32 bytes a
    batch, read in C; what it gives is unchanged, runs added after included."""
    files = [SourceFile(f"f{i}.h5", 3 + i % 5) for i in range(200)] + \
        [SourceFile("big.h5", 1000)]
    plan = make_plan(files, 10)
    table = plan.batches
    assert isinstance(table, BatchTable) and table.listed is not None
    want, offset = [], 0
    for index, source in enumerate(files):
        for start, stop in cut_rows(source.rows, 10, source.unit_rows):
            want.append(Batch(len(want), index, start, stop, offset + start))
        offset += source.rows
    assert list(table) == want and [table.batch(i) for i in range(len(want))] == want
    for first, stop in [(0, 64), (63, 65), (190, 260), (250, len(want) + 3)]:
        assert table.take(first, stop) == want[first:stop]
        assert table.rows_between(first, stop) == sum(b.rows for b in want[first:stop])
        assert table.rows_json(first, stop) == [[b.batch_id, b.file_index, b.start, b.stop]
                                                for b in want[first:stop]]
    assert [list(column) for column in table.columns()] == [
        [b.batch_id for b in want], [b.file_index for b in want], [b.start for b in want],
        [b.stop for b in want]]
    assert pickle.loads(pickle.dumps(plan)) == plan
    items = make_item_plan(files, BatchSize(rows=3), [1] * len(files)).batches
    assert isinstance(items, BatchTable) and items.listed is not None and len(items) == 67
