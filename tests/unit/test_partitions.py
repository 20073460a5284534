"""io/partitions.py: --partition-by plans of real Parquet files (columns and hive dirs)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpiscore.config import BatchSize
from mpiscore.errors import ConfigError, InputError
from mpiscore.io.fields import ParquetSelection
from mpiscore.io.parquet import ParquetReader
from mpiscore.io.partitions import HiveKeyReader, check_keys, hive_values, partition_plan
from mpiscore.io.sources import dataset_files
from mpiscore.plan import Plan

BIG = BatchSize(rows=1000)


def write(path: Path, row_group_size: int = 2, **columns: list) -> str:
    """A Parquet file with small row groups, so runs cross row group boundaries."""
    rows = len(next(iter(columns.values())))
    table = pa.table({**columns, "x": list(range(rows))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def ranges(plan: Plan) -> list[tuple[int, int, int]]:
    return [(b.file_index, b.start, b.stop) for b in plan.batches]


def check_cover(plan: Plan) -> None:
    """Every row once, in order; ids and global rows numbered as make_plan does."""
    offsets = [0]
    for source in plan.files:
        offsets.append(offsets[-1] + source.rows)
    covered = [offsets[b.file_index] + row for b in plan.batches for row in range(b.start, b.stop)]
    assert covered == list(range(plan.total_rows))
    assert [b.batch_id for b in plan.batches] == list(range(len(plan.batches)))
    assert all(b.global_start == offsets[b.file_index] + b.start for b in plan.batches)
    assert all(0 < b.rows <= plan.batch_rows for b in plan.batches)


def test_contiguous_groups_are_one_batch_each(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", user=list("aaabbcccc"))
    plan = partition_plan([path], ["user"], BIG, 8)
    assert ranges(plan) == [(0, 0, 3), (0, 3, 5), (0, 5, 9)]
    assert [(f.path, f.rows, f.unit_rows) for f in plan.files] == [(path, 9, 1)]
    check_cover(plan)


def test_a_group_larger_than_the_batch_is_split_into_near_equal_pieces(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", user=["a"] * 10 + ["b"] * 2)
    plan = partition_plan([path], ["user"], BatchSize(rows=4), 8)
    assert ranges(plan) == [(0, 0, 3), (0, 3, 6), (0, 6, 10), (0, 10, 12)]
    assert plan.batch_rows == 4
    check_cover(plan)


def test_a_batch_size_in_bytes_counts_rows_of_row_nbytes(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", user=["a"] * 8)
    plan = partition_plan([path], ["user"], BatchSize(nbytes=40), 10)
    assert ranges(plan) == [(0, 0, 4), (0, 4, 8)]


def test_groups_across_two_files_are_cut_at_the_file_boundary(tmp_path: Path) -> None:
    first = write(tmp_path / "a.parquet", user=list("aab"))
    second = write(tmp_path / "b.parquet", user=list("bbc"))
    plan = partition_plan([first, second], ["user"], BIG, 8)
    assert ranges(plan) == [(0, 0, 2), (0, 2, 3), (1, 0, 2), (1, 2, 3)]
    assert [b.global_start for b in plan.batches] == [0, 2, 3, 5]
    check_cover(plan)


def test_several_keys_group_on_the_tuple(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", region=["eu", "eu", "eu", "us", "us", "us"],
                 user=["a", "a", "b", "b", "b", "c"])
    assert ranges(partition_plan([path], ["region", "user"], BIG, 8)) == \
        [(0, 0, 2), (0, 2, 3), (0, 3, 5), (0, 5, 6)]
    assert ranges(partition_plan([path], ["region"], BIG, 8)) == [(0, 0, 3), (0, 3, 6)]


def test_a_tuple_coming_back_is_refused_though_each_key_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", region=["eu", "us", "eu"], user=["a", "a", "a"])
    with pytest.raises(InputError, match=r"\('eu', 'a'\) is in rows 0-0 and again from row 2"):
        partition_plan([path], ["region", "user"], BIG, 8)


def test_hive_directories_give_every_row_of_a_file_its_value(tmp_path: Path) -> None:
    table = pa.table({"user": ["b", "a b", "b", None, "a b", "b"], "x": list(range(6))})
    pq.write_to_dataset(table, tmp_path / "data", partition_cols=["user"])
    paths = dataset_files(str(tmp_path / "data"), (".parquet",))
    plan = partition_plan(paths, ["user"], BIG, 8)
    rows = {hive_values(p, ["user"])["user"]: f.rows for p, f in zip(paths, plan.files,
                                                                     strict=True)}
    assert rows == {"a b": 2, "b": 3, None: 1}  # URL-decoded; pyarrow's null directory
    assert ranges(plan) == [(i, 0, f.rows) for i, f in enumerate(plan.files)]
    check_cover(plan)


def test_a_hive_level_and_a_column_combine(tmp_path: Path) -> None:
    directory = tmp_path / "region=eu"
    directory.mkdir()
    path = write(directory / "part.parquet", user=list("aabbb"))
    assert ranges(partition_plan([path], ["region", "user"], BIG, 8)) == [(0, 0, 2), (0, 2, 5)]
    assert hive_values(path) == {"region": "eu"}


def test_hive_values_takes_the_deepest_level_and_ignores_other_names() -> None:
    path = "/d/user=x/day=2024-01-01/user=y%2Fz/part=0.parquet"
    assert hive_values(path, ["user"]) == {"user": "y/z"}
    assert hive_values(path) == {"user": "y/z", "day": "2024-01-01"}


def test_a_value_coming_back_names_the_file_key_value_and_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", user=list("aabbba"))
    with pytest.raises(InputError) as caught:
        partition_plan([path], ["user"], BIG, 8)
    message = str(caught.value)
    assert message.startswith(f"{path}: --partition-by user: value 'a' is in rows 0-1 and "
                              "again from row 5")
    assert "sort the data by user or write it partitioned into user=value/ directories" \
        in message
    assert caught.value.exit_code == 3


def test_a_missing_key_is_a_config_error_listing_the_nearest_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", alpha=[1], user=[1], users=[1])
    with pytest.raises(ConfigError) as caught:
        check_keys([path], ["usr"])
    assert str(caught.value) == (f"--partition-by usr: no column or key=value/ directory of "
                                 f"that name in {path}; columns: user, users, alpha, x")
    with pytest.raises(ConfigError, match="--partition-by usr: no column"):
        partition_plan([path], ["user", "usr"], BIG, 8)


def test_a_key_missing_from_one_file_only_names_that_file(tmp_path: Path) -> None:
    good = write(tmp_path / "a.parquet", user=[1])
    bad = write(tmp_path / "b.parquet", other=[1])
    with pytest.raises(ConfigError, match=f"in {bad}; columns: other, x$"):
        check_keys([good, bad], ["user"])


def test_nulls_form_their_own_group(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", user=[None, None, "a", "a", "a"])
    assert ranges(partition_plan([path], ["user"], BIG, 8)) == [(0, 0, 2), (0, 2, 5)]
    back = write(tmp_path / "b.parquet", user=[None, "a", None])
    with pytest.raises(InputError, match="value None is in rows 0-0 and again from row 2"):
        partition_plan([back], ["user"], BIG, 8)


def test_nan_values_of_a_float_key_form_one_group(tmp_path: Path) -> None:
    nan = float("nan")
    path = write(tmp_path / "a.parquet", score=[nan, nan, nan, 1.0, 1.0])
    assert ranges(partition_plan([path], ["score"], BIG, 8)) == [(0, 0, 3), (0, 3, 5)]
    back = write(tmp_path / "b.parquet", score=[nan, 1.0, nan])
    with pytest.raises(InputError, match="value nan is in rows 0-0 and again from row 2"):
        partition_plan([back], ["score"], BIG, 8)


def test_a_dictionary_column_groups_by_its_values(tmp_path: Path) -> None:
    users = pa.array(list("aabbb")).dictionary_encode()
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user": users}), path, row_group_size=2)
    assert ranges(partition_plan([str(path)], ["user"], BIG, 8)) == [(0, 0, 2), (0, 2, 5)]


def test_a_column_that_cannot_compare_is_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", row_group_size=10, tags=[[1], [1], [2]])
    with pytest.raises(InputError, match=r"--partition-by tags: a list<.*> column cannot be a key"):
        partition_plan([path], ["tags"], BIG, 8)


def test_an_empty_file_has_no_batch(tmp_path: Path) -> None:
    empty = write(tmp_path / "a.parquet", user=pa.array([], pa.string()))
    full = write(tmp_path / "b.parquet", user=list("ab"))
    plan = partition_plan([empty, full], ["user"], BIG, 8)
    assert ranges(plan) == [(1, 0, 1), (1, 1, 2)]
    check_cover(plan)


def test_batches_cover_every_row_once_in_order_within_one_group(tmp_path: Path) -> None:
    rng = random.Random(13)
    paths, keys = [], []
    for index in range(5):
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(0, 6))]
        values = [f"{index}-{group}" for group, size in enumerate(sizes) for _ in range(size)]
        groups = [v for v, size in zip(range(len(sizes)), sizes, strict=True)
                  for _ in range(size)]
        paths.append(write(tmp_path / f"{index}.parquet", row_group_size=rng.randint(1, 9),
                           user=pa.array(values, pa.string()), group=pa.array(groups,
                                                                              pa.int64())))
        keys.append(values)
    for target in (1, 3, 7, 1000):
        plan = partition_plan(paths, ["group"], BatchSize(rows=target), 8)
        check_cover(plan)
        for batch in plan.batches:
            assert len(set(keys[batch.file_index][batch.start:batch.stop])) == 1
        starts = {(b.file_index, b.start) for b in plan.batches}
        for index, values in enumerate(keys):  # every group starts a batch
            assert all((index, row) in starts for row in range(len(values))
                       if row == 0 or values[row] != values[row - 1])


def test_the_plan_is_plain_data_for_the_fingerprint(tmp_path: Path) -> None:
    """Batch bounds are Python ints: the plan goes to JSON (fingerprint, plan.json)."""
    path = write(tmp_path / "a.parquet", user=["a", "a", "b", "c", "c", "c"])
    plan = partition_plan([path], ["user"], BatchSize(rows=2), 8)
    assert json.loads(json.dumps(plan.to_json()))["batches"] == [list(b) for b in [
        (0, 0, 0, 2), (1, 0, 2, 3), (2, 0, 3, 4), (3, 0, 4, 6)]]


def test_the_reader_adds_keys_only_a_directory_holds(tmp_path: Path) -> None:
    table = pa.table({"user": ["u1", "u1", "u2"], "v": [1.0, 2.0, 3.0],
                      "region": ["eu", "eu", "us"]})
    pq.write_to_dataset(table, tmp_path / "hive", partition_cols=["region"])
    paths = dataset_files(str(tmp_path / "hive"), (".parquet",))
    plan = partition_plan(paths, ["region", "user"], BIG, 8)
    selection = ParquetSelection((), ("user", "v"))
    reader = HiveKeyReader(ParquetReader(tuple(paths), selection), paths, ["region", "user"])
    seen = []
    for batch in plan.batches:
        _, kept = reader.read(batch)
        assert set(kept) == {"user", "v", "region"}  # user is the file's own column
        seen.append((kept["region"].to_pylist(), kept["user"].to_pylist()))
    reader.close()
    assert seen == [(["eu", "eu"], ["u1", "u1"]), (["us"], ["u2"])]
