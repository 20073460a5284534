"""io/: HDF5 and Parquet readers and writers (without MPI: a LocalWorld), and input expansion."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mpiscore.config import InputSpec
from mpiscore.errors import ConfigError, InputError, OutputError
from mpiscore.io import hdf5, parquet
from mpiscore.io.fields import ROW_STATUS, Field, ParquetSelection, fill_columns
from mpiscore.io.sources import expand
from mpiscore.plan import Batch, SourceFile, make_plan
from mpiscore.rank.world import LocalWorld
from tests import builders


def source(path: Path, dataset: str = "/features", name: str = "features") -> hdf5.Hdf5Source:
    return hdf5.Hdf5Source(str(path), ((name, dataset),))


def shuffled(batches: tuple[Batch, ...], seed: int = 3) -> list[Batch]:
    order = list(batches)
    random.Random(seed).shuffle(order)
    assert order != list(batches)
    return order


# ---- HDF5 input ----------------------------------------------------------------------------


def test_hdf5_describe_files_and_fields(tmp_path: Path) -> None:
    a = builders.write_h5(tmp_path / "a.h5", chunks=4, features=builders.features(10))
    b = builders.write_h5(tmp_path / "b.h5", features=builders.features(7, seed=1))
    files, fields = hdf5.describe([source(a), source(b)])
    assert files == [SourceFile(str(a), 10, 4), SourceFile(str(b), 7, 1)]
    assert fields == {"features": Field("features", "<f4", (8,), f"{a}:/features")}


def test_hdf5_reader_reads_the_right_rows_across_files(tmp_path: Path) -> None:
    first, second = builders.features(23, seed=1), builders.features(17, seed=2)
    a = builders.write_h5(tmp_path / "a.h5", chunks=5, features=first)
    b = builders.write_h5(tmp_path / "b.h5", chunks=3, features=second)
    sources = (source(a), source(b))
    files, _ = hdf5.describe(sources)
    plan = make_plan(files, 7)
    everything = np.concatenate([first, second])
    reader = hdf5.Hdf5Reader(sources)
    try:
        pieces = []
        for batch in shuffled(plan.batches):
            arrays, kept = reader.read(batch)
            assert kept == {}
            np.testing.assert_array_equal(arrays["features"],
                                          everything[batch.global_start:batch.global_stop])
            pieces.append((batch.global_start, arrays["features"].copy()))  # buffers are reused
    finally:
        reader.close()
    pieces.sort(key=lambda piece: piece[0])
    np.testing.assert_array_equal(np.concatenate([array for _, array in pieces]), everything)


def test_hdf5_reader_reuses_one_buffer_per_input(tmp_path: Path) -> None:
    """Reads go into one buffer per input (fresh arrays cost page faults every batch)."""
    data = builders.write_h5(tmp_path / "a.h5", chunks=4,
                             features=np.arange(80, dtype=np.float32).reshape(10, 8))
    sources = (source(data),)
    plan = make_plan(hdf5.describe(sources)[0], 4)
    reader = hdf5.Hdf5Reader(sources)
    try:
        first = reader.read(plan.batches[0])[0]["features"]
        last = reader.read(plan.batches[-1])[0]["features"]
    finally:
        reader.close()
    assert np.shares_memory(first, last)
    np.testing.assert_array_equal(last, np.arange(64, 80, dtype=np.float32).reshape(2, 8))


def _layouts(path: Path, userblock: int) -> dict[str, np.ndarray]:
    """One dataset per storage layout, with distinct values in every row."""
    rng = np.random.default_rng(7)
    data = {name: rng.normal(size=(300, 2, 3)).astype(np.float32)
            for name in ["contiguous", "chunked", "gaps", "gzip", "big_endian", "split"]}
    data["gaps"][:64] = data["gaps"][192:] = 5  # chunks never written: HDF5's fill value
    with h5py.File(path, "w", userblock_size=userblock) as handle:
        handle["contiguous"] = data["contiguous"]
        handle.create_dataset("chunked", data=data["chunked"], chunks=(64, 2, 3))
        gaps = handle.create_dataset("gaps", (300, 2, 3), np.float32, chunks=(64, 2, 3),
                                     fillvalue=5)
        gaps[64:192] = data["gaps"][64:192]
        handle.create_dataset("gzip", data=data["gzip"], chunks=(64, 2, 3), compression="gzip")
        handle.create_dataset("big_endian", data=data["big_endian"].astype(">f4"))
        handle.create_dataset("split", data=data["split"], chunks=(64, 1, 3))
    return data


@pytest.mark.parametrize("userblock", [0, 512])
def test_hdf5_reader_reads_raw_bytes_only_where_they_are_the_rows(tmp_path: Path,
                                                                  userblock: int) -> None:
    """Unfiltered native rows are read with preadv, others by HDF5; both give the same rows,
    across chunk boundaries and never-written chunks, and with a user block."""
    path = tmp_path / "layouts.h5"
    data = _layouts(path, userblock)
    reader = hdf5.Hdf5Reader((hdf5.Hdf5Source(str(path), tuple((n, "/" + n) for n in data)),))
    try:
        for start, stop in [(0, 64), (10, 250), (60, 70), (290, 300), (0, 300), (128, 192)]:
            arrays, _ = reader.read(Batch(0, 0, start, stop, start))
            for name, expected in data.items():
                np.testing.assert_array_equal(arrays[name], expected[start:stop], err_msg=name)
        raw = {name for name, dataset in reader.open[0].datasets.items() if dataset.raw}
    finally:
        reader.close()
    # chunk addresses from HDF5 before 1.14.4 leave out a user block: chunked goes by HDF5 then
    assert raw == ({"contiguous", "chunked", "gaps"} if userblock == 0 else {"contiguous"})


def test_hdf5_raw_read_of_a_truncated_file_names_it(tmp_path: Path) -> None:
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(1000))
    reader = hdf5.Hdf5Reader((source(path),))
    reader.read(Batch(0, 0, 0, 10, 0))
    assert reader.open[0].datasets["features"].raw is not None
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(InputError, match=re.escape(f"{path} rows 900-999: read failed: file ends")):
        reader.read(Batch(1, 0, 900, 1000, 900))
    reader.close()


def test_hdf5_reader_keeps_at_most_max_open_files(tmp_path: Path) -> None:
    paths = [builders.write_h5(tmp_path / f"{i}.h5", features=np.full((2, 1), i, np.float32))
             for i in range(4)]
    reader = hdf5.Hdf5Reader(tuple(source(p) for p in paths), max_open=2)
    for i in [0, 1, 2, 3, 0]:
        arrays, _ = reader.read(Batch(i, i, 0, 2, 2 * i))
        assert (arrays["features"] == i).all()
        assert len(reader.open) <= 2
    assert list(reader.open) == [3, 0]  # least recently used first
    reader.read(Batch(4, 3, 0, 2, 6))  # using 3 again makes 0 the least recent
    reader.read(Batch(5, 1, 0, 2, 2))
    assert list(reader.open) == [3, 1]
    reader.close()
    assert reader.open == {}


def test_hdf5_several_datasets_per_file(tmp_path: Path) -> None:
    a_data, b_data = builders.features(6, width=4), builders.features(6, width=3, seed=5)
    path = builders.write_h5(tmp_path / "x.h5", a=a_data, b=b_data)
    sources = (hdf5.Hdf5Source(str(path), (("a", "/a"), ("b", "/b"))),)
    files, fields = hdf5.describe(sources)
    assert files[0].rows == 6 and set(fields) == {"a", "b"} and fields["b"].shape == (3,)
    arrays, _ = hdf5.Hdf5Reader(sources).read(Batch(0, 0, 2, 5, 2))
    np.testing.assert_array_equal(arrays["a"], a_data[2:5])
    np.testing.assert_array_equal(arrays["b"], b_data[2:5])


def test_hdf5_missing_dataset_names_file_and_dataset(tmp_path: Path) -> None:
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(3))
    with pytest.raises(InputError, match=re.escape(f"{path}:/nope: no such dataset")):
        hdf5.describe([source(path, "/nope")])


def test_hdf5_files_with_different_row_shapes_refused(tmp_path: Path) -> None:
    a = builders.write_h5(tmp_path / "a.h5", features=builders.features(3, width=8))
    b = builders.write_h5(tmp_path / "b.h5", features=builders.features(3, width=5))
    with pytest.raises(InputError, match=re.escape(f"{b}:/features: rows of shape (5,)")):
        hdf5.describe([source(a), source(b)])


def test_hdf5_files_with_different_dtypes_refused(tmp_path: Path) -> None:
    a = builders.write_h5(tmp_path / "a.h5", features=builders.features(3))
    b = builders.write_h5(tmp_path / "b.h5", features=builders.features(3, dtype="float64"))
    with pytest.raises(InputError, match="differ from"):
        hdf5.describe([source(a), source(b)])


def test_hdf5_datasets_with_different_row_counts_refused(tmp_path: Path) -> None:
    path = builders.write_h5(tmp_path / "x.h5", a=builders.features(4), b=builders.features(5))
    with pytest.raises(InputError, match="differ in row count"):
        hdf5.describe([hdf5.Hdf5Source(str(path), (("a", "/a"), ("b", "/b")))])


def test_hdf5_non_numeric_or_scalar_dataset_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as handle:
        handle["names"] = np.array([b"a", b"b"])
        handle["scalar"] = 3.0
    for name in ("/names", "/scalar"):
        with pytest.raises(InputError, match="expected a numeric array with rows"):
            hdf5.describe([source(path, name)])


def test_hdf5_unreadable_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    path.write_text("not hdf5")
    with pytest.raises(InputError, match=re.escape(f"{path}: cannot open as HDF5")):
        hdf5.describe([source(path)])


def test_default_dataset(tmp_path: Path) -> None:
    named = builders.write_h5(tmp_path / "a.h5", features=builders.features(2),
                              other=builders.features(2))
    assert hdf5.default_dataset(str(named), "features") == "/features"
    only = tmp_path / "b.h5"
    with h5py.File(only, "w") as handle:
        handle.create_group("g")["x"] = builders.features(2)
    assert hdf5.default_dataset(str(only), "features") == "/g/x"
    with pytest.raises(InputError, match=r"holds 2 datasets \(/other, /x\)"):
        hdf5.default_dataset(str(builders.write_h5(tmp_path / "c.h5", x=builders.features(2),
                                                   other=builders.features(2))), "features")


# ---- HDF5 output ---------------------------------------------------------------------------

OUTPUTS = [Field("score", "<f4", (3,)), Field("label", "<i8", ()), ROW_STATUS]


def expected_outputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"score": rng.normal(size=(rows, 3)).astype(np.float32),
            "label": rng.integers(-5, 1000, size=rows).astype(np.int64),
            "row_status": (np.arange(rows) % 2).astype(np.uint8)}


def hdf5_output(tmp_path: Path, files: list[SourceFile], batch_rows: int
                ) -> tuple[hdf5.Hdf5Writer, Path, Path, tuple[Batch, ...]]:
    plan = make_plan(files, batch_rows)
    partial, final = tmp_path / "out.h5.partial", tmp_path / "out.h5"
    plan_rows = np.array([[b.batch_id, b.file_index, b.start, b.stop] for b in plan.batches])
    offsets = hdf5.create(partial, OUTPUTS, plan.total_rows, {"model": "m.onnx"}, plan_rows)
    assert set(offsets) == {"score", "label", "row_status"}
    return hdf5.Hdf5Writer(partial, final, OUTPUTS, offsets), partial, final, plan.batches


def test_hdf5_writer_batches_in_any_order_give_the_right_file(tmp_path: Path) -> None:
    files = [SourceFile("a.h5", 20, 3), SourceFile("b.h5", 13)]
    writer, partial, final, batches = hdf5_output(tmp_path, files, 6)
    expected = expected_outputs(33)
    for batch in shuffled(batches):
        writer.write(batch, {name: array[batch.global_start:batch.global_stop]
                             for name, array in expected.items()})
    writer.sync()
    writer.close()
    with h5py.File(partial, "r") as handle:
        assert handle.attrs[hdf5.STATUS_ATTR] == "incomplete"
    assert not final.exists()
    writer.finish(LocalWorld(), complete=True)
    assert final.exists() and not partial.exists()
    with h5py.File(final, "r") as handle:
        assert handle.attrs[hdf5.STATUS_ATTR] == "complete"
        assert handle.attrs["model"] == "m.onnx"
        for name, array in expected.items():
            assert handle[name].dtype == array.dtype
            np.testing.assert_array_equal(handle[name][()], array)
        recorded = handle["_mpiscore/plan"][()]
    assert recorded.tolist() == [[b.batch_id, b.file_index, b.start, b.stop] for b in batches]


def test_hdf5_incomplete_finish_leaves_the_partial_file(tmp_path: Path) -> None:
    writer, partial, final, batches = hdf5_output(tmp_path, [SourceFile("a.h5", 10)], 4)
    expected = expected_outputs(10)
    writer.write(batches[1], {n: a[batches[1].global_start:batches[1].global_stop]
                              for n, a in expected.items()})
    writer.close()
    writer.finish(LocalWorld(), complete=False)
    assert partial.exists() and not final.exists()
    with h5py.File(partial, "r") as handle:
        assert handle.attrs[hdf5.STATUS_ATTR] == "incomplete"
        np.testing.assert_array_equal(handle["score"][4:8], expected["score"][4:8])
    assert hdf5.offsets(partial, OUTPUTS) == writer.offsets


def test_hdf5_writer_refuses_a_batch_of_the_wrong_shape(tmp_path: Path) -> None:
    writer, _, _, batches = hdf5_output(tmp_path, [SourceFile("a.h5", 10)], 5)
    columns = {n: a[:5] for n, a in expected_outputs(10).items()}
    columns["score"] = columns["score"][:, :2]
    with pytest.raises(OutputError, match=r"out\.h5:/score batch 0: got shape \(5, 2\)"):
        writer.write(batches[0], columns)
    writer.close()


def test_hdf5_create_in_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot create HDF5 output"):
        hdf5.create(tmp_path / "no" / "out.h5.partial", OUTPUTS, 4, {}, np.zeros((0, 4)))


# ---- Parquet input -------------------------------------------------------------------------

GROUPS = 7  # rows per row group


def parquet_input(path: Path, rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    table = pa.table({
        "id": pa.array([f"row-{seed}-{i}" for i in range(rows)]),
        "f0": rng.normal(size=rows).astype(np.float32),
        "f1": rng.normal(size=rows).astype(np.float32),
        "f2": rng.integers(0, 9, size=rows).astype(np.int16),
        "vec": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=rows * 4).astype(np.float32)), 4),
    })
    pq.write_table(table, path, row_group_size=GROUPS)
    return table


def stacked(table: pa.Table, columns: list[str]) -> np.ndarray:
    return np.stack([table.column(c).to_numpy().astype(np.float32) for c in columns], axis=1)


def test_parquet_describe_files_fields_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    parquet_input(path, 30, 0)
    selection = ParquetSelection((("x", ("f0", "f1", "f2")), ("v", ("vec",))), ("id",))
    files, fields, kept = parquet.describe([str(path)], selection)
    assert files == [SourceFile(str(path), 30, (7, 7, 7, 7, 2))]
    assert (fields["x"].dtype, fields["x"].shape, fields["x"].flat) == ("<f4", (3,), True)
    assert fields["x"].column_dtypes == (("f0", "<f4"), ("f1", "<f4"), ("f2", "<i2"))
    assert fields["v"].column_dtypes == ()  # one column: its dtype is the field's
    assert (fields["v"].dtype, fields["v"].shape, fields["v"].flat) == ("<f4", (4,), True)
    assert list(kept) == ["id"] and kept["id"].dtype == "|O"


def test_parquet_reader_batches_crossing_row_groups(tmp_path: Path) -> None:
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    tables = [parquet_input(paths[0], 30, 0), parquet_input(paths[1], 11, 1)]
    selection = ParquetSelection((("x", ("f0", "f1", "f2")), ("v", ("vec",))), ("id",))
    reader = parquet.ParquetReader(tuple(map(str, paths)), selection)
    ranges = [(0, 0, 30), (0, 5, 16), (0, 6, 7), (0, 7, 14), (0, 13, 29), (1, 0, 11),
              (0, 29, 30), (1, 3, 10), (0, 0, 1)]
    for batch_id, (file_index, start, stop) in enumerate(ranges):
        table = tables[file_index].slice(start, stop - start)
        arrays, kept = reader.read(Batch(batch_id, file_index, start, stop, 0))
        assert set(arrays) == {"x", "v"}
        np.testing.assert_array_equal(arrays["x"], stacked(table, ["f0", "f1", "f2"]))
        vectors = np.array(table.column("vec").to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(arrays["v"], vectors)
        assert arrays["v"].shape == (stop - start, 4)
        assert kept["id"].to_pylist() == table.column("id").to_pylist()
    reader.close()


def test_parquet_reader_follows_the_plan(tmp_path: Path) -> None:
    paths = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    tables = [parquet_input(Path(paths[0]), 30, 0), parquet_input(Path(paths[1]), 11, 1)]
    selection = ParquetSelection((("x", ("f0", "f1")),), ("id",))
    files, _, _ = parquet.describe(paths, selection)
    reader = parquet.ParquetReader(tuple(paths), selection)
    ids = []
    for batch in make_plan(files, 10).batches:
        ids.extend(reader.read(batch)[1]["id"].to_pylist())
    assert ids == [f"row-{seed}-{i}" for seed, rows in ((0, 30), (1, 11)) for i in range(rows)]
    assert len(tables[0]) + len(tables[1]) == len(ids)


def test_parquet_reader_refuses_nulls(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"f0": pa.array([1.0, None, 3.0])}), path)
    reader = parquet.ParquetReader((str(path),), ParquetSelection((("x", ("f0",)),)))
    with pytest.raises(InputError, match=r"rows 0-2: column 'f0' has 1 null values"):
        reader.read(Batch(0, 0, 0, 3, 0))


def test_parquet_missing_column_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    parquet_input(path, 5, 0)
    with pytest.raises(InputError, match=re.escape(f"{path}: no column 'f9'")):
        parquet.describe([str(path)], ParquetSelection((("x", ("f0", "f9")),)))
    with pytest.raises(InputError, match="no column 'key'"):
        parquet.describe([str(path)], ParquetSelection((("x", ("f0",)),), ("key",)))


def test_parquet_non_numeric_feature_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    parquet_input(path, 5, 0)
    with pytest.raises(InputError, match=r"must be numeric.*not id \(string\)"):
        parquet.describe([str(path)], ParquetSelection((("x", ("f0", "id")),)))


def test_parquet_list_of_strings_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"tags": pa.FixedSizeListArray.from_arrays(
        pa.array(["a", "b", "c", "d"]), 2)}), path)
    with pytest.raises(InputError, match="list items are string"):
        parquet.describe([str(path)], ParquetSelection((("x", ("tags",)),)))


def test_parquet_files_disagreeing_on_types_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"f0": np.zeros(2, np.float32)}), a)
    pq.write_table(pa.table({"f0": np.zeros(2, np.float64)}), b)
    with pytest.raises(InputError, match="all files must agree"):
        parquet.describe([str(a), str(b)], ParquetSelection((("x", ("f0",)),)))


def test_parquet_files_disagreeing_on_one_stacked_column_name_it(tmp_path: Path) -> None:
    """f2 alone is float64 in the second file: the message names it, not every column."""
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    columns = {f"f{i}": np.zeros(2, np.float32) for i in range(4)}
    pq.write_table(pa.table(columns), a)
    pq.write_table(pa.table({**columns, "f2": np.zeros(2, np.float64)}), b)
    with pytest.raises(InputError, match=rf"{b}:f0,f1,f2,f3: column f2 is float64, in "
                                         rf"{a}:f0,f1,f2,f3 float32; all files must agree"):
        parquet.describe([str(a), str(b)], ParquetSelection((("x", tuple(columns)),)))


def test_parquet_unreadable_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    with pytest.raises(InputError, match="cannot open as Parquet"):
        parquet.describe([str(path)], ParquetSelection((("x", ("f0",)),)))


def test_column_selection_helpers(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    parquet_input(path, 3, 0)
    schema = parquet.read_schema(str(path))
    assert parquet.match_columns(str(path), schema, ["f*", "id", "f1"]) == ("f0", "f1", "f2",
                                                                              "id")
    assert parquet.numeric_columns(schema, ["f2"]) == ("f0", "f1")
    with pytest.raises(InputError, match=r"no column matches 'g\*'"):
        parquet.match_columns(str(path), schema, ["g*"])


def test_a_column_named_like_a_glob_is_that_column() -> None:
    """``x[0]`` is a glob matching ``x0``: where a column is called ``x[0]``, it is it."""
    schema = pa.schema([(name, pa.float32()) for name in
                        ("x[0]", "x[1]", "x0", "x1", "y*")])
    assert parquet.match_columns("b.parquet", schema, ["x[0]", "x[1]"]) == ("x[0]", "x[1]")
    assert parquet.match_columns("b.parquet", schema, ["x[01]"]) == ("x0", "x1")
    assert parquet.match_columns("b.parquet", schema, ["y*"]) == ("y*",)


def default(schema: pa.Schema, name: str = "x", row_shape: tuple = (16,),
            keep: tuple[str, ...] = ()) -> tuple[str, ...]:
    return parquet.default_columns("d.parquet", schema, name, row_shape, keep)


def test_default_columns_only_where_no_guess_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    parquet_input(path, 3, 0)  # id (string), f0, f1, f2 numbers, vec: fixed-size list of 4
    schema = parquet.read_schema(str(path))
    assert default(schema) == ("vec",)  # the only fixed-size-list column
    assert default(schema, "f1", (1,)) == ("f1",)  # named like a 1-wide input
    assert default(schema, "f1", ()) == ("f1",)
    with pytest.raises(ConfigError, match=r"numeric columns f0, f1, f2; name them: "
                                          r"--columns 'f\*'"):
        default(schema, keep=("vec",))
    with pytest.raises(ConfigError, match="numeric columns f0, f1, f2"):
        default(schema, "f1", (4,), keep=("vec",))  # named, but a wide input: not a guess


def test_default_columns_message_says_what_is_needed_and_cuts_lists() -> None:
    schema = pa.schema([("id", pa.int64()), *[(f"f{i}", pa.float32()) for i in range(16)],
                        ("flag", pa.bool_()), ("label", pa.int64())])
    with pytest.raises(ConfigError) as caught:
        default(schema, "pixels", (3, 8, 8))
    message = str(caught.value)
    assert message.startswith("d.parquet: which columns feed model input 'pixels' "
                              "(3 x 8 x 8 = 192 values per row)?")
    assert "id, f0, f1, f2, f3, f4, f5, f6 ... and 11 more" in message
    assert message.endswith("--columns 'f[0-9]*'")  # 'f*' would take flag too
    with pytest.raises(ConfigError, match="a width the model leaves open"):
        default(schema, "x", (None,))
    numbered = pa.schema([(name, pa.float64()) for name in ("a1", "b1", "b2", "b3", "a2")])
    with pytest.raises(ConfigError, match=r"--columns 'a\*'$"):
        default(numbered, "x", (2,))  # the run as wide as the input first
    with pytest.raises(ConfigError, match=r"--columns 'b\*'$"):
        default(numbered, "x", (5,))  # else the longest
    with pytest.raises(InputError, match="no numeric column to feed model input 'x'"):
        default(pa.schema([("s", pa.string())]))


# ---- Parquet output ------------------------------------------------------------------------


def parquet_output(tmp_path: Path, batches: Sequence[Batch]) -> tuple[parquet.ParquetWriter,
                                                                       Path, Path]:
    partial, final = tmp_path / "out.parquet.partial", tmp_path / "out.parquet"
    parquet.create(partial)
    writer = parquet.ParquetWriter(partial, final, OUTPUTS, [Field("id", "|O", ())],
                                   len(batches), {"model": "m.onnx"})
    return writer, partial, final


def write_all(writer: parquet.ParquetWriter, batches: list[Batch], rows: int
              ) -> dict[str, np.ndarray]:
    expected = expected_outputs(rows)
    ids = np.array([f"id-{i}" for i in range(rows)], dtype=object)
    for batch in batches:
        part = slice(batch.global_start, batch.global_stop)
        writer.write(batch, {"id": pa.array(ids[part].tolist()),
                             **{n: a[part] for n, a in expected.items()}})
    writer.sync()
    writer.close()
    return {"id": ids, **expected}


def check_table(table: pa.Table, expected: dict[str, np.ndarray]) -> None:
    assert table.column_names == ["id", "score", "label", "row_status"]
    assert table.column("id").to_pylist() == list(expected["id"])
    scores = np.array(table.column("score").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(scores, expected["score"])
    np.testing.assert_array_equal(table.column("label").to_numpy(), expected["label"])
    np.testing.assert_array_equal(table.column("row_status").to_numpy(), expected["row_status"])


def part_names(batches: tuple[Batch, ...]) -> list[str]:
    return [f"part-{b.batch_id:09d}.parquet" for b in batches]


def test_parquet_writer_out_of_order_batches_read_back_in_row_order(tmp_path: Path) -> None:
    plan = make_plan([SourceFile("a.parquet", 25, (7, 7, 11)), SourceFile("b.parquet", 9)], 8)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    expected = write_all(writer, shuffled(plan.batches), plan.total_rows)
    assert not final.exists()
    writer.finish(LocalWorld(), complete=True)
    assert final.is_dir() and not partial.exists()
    assert sorted(os.listdir(final)) == part_names(plan.batches)  # only Parquet files
    check_table(ds.dataset(final).to_table(), expected)
    for batch in plan.batches:
        info = json.loads(pq.read_metadata(final / part_names((batch,))[0])
                          .metadata[parquet.METADATA_KEY.encode()])
        assert info["status"] == "complete" and info["model"] == "m.onnx"
        assert info["output_shapes"] == {"score": [3], "label": [], "row_status": []}
        assert (info["batch_id"], info["row_range"]) == (batch.batch_id, [batch.global_start,
                                                                          batch.global_stop])


def test_parquet_finish_renames_and_rewrites_nothing(tmp_path: Path) -> None:
    """Each batch is written once, as its final file: finish must not merge or copy it."""
    plan = make_plan([SourceFile("a.parquet", 60)], 4)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    expected = write_all(writer, shuffled(plan.batches), 60)
    inodes = {name: os.stat(partial / name).st_ino for name in part_names(plan.batches)}
    writer.finish(LocalWorld(), complete=True)
    assert {name: os.stat(final / name).st_ino for name in inodes} == inodes
    check_table(ds.dataset(final).to_table(), expected)


def test_parquet_floats_are_not_dictionary_encoded(tmp_path: Path) -> None:
    """A dictionary on scores is tried and dropped for every page: five times the write time."""
    plan = make_plan([SourceFile("a.parquet", 20)], 20)
    writer, partial, _ = parquet_output(tmp_path, plan.batches)
    write_all(writer, list(plan.batches), 20)
    group = pq.read_metadata(partial / "part-000000000.parquet").row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["score.list.element"])
    assert any("DICTIONARY" in e for e in encodings["label"])


def test_parquet_incomplete_finish_keeps_written_batches(tmp_path: Path) -> None:
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    write_all(writer, [plan.batches[3], plan.batches[1]], 20)
    writer.finish(LocalWorld(), complete=False)
    assert not final.exists()
    assert parquet.written_batches(partial) == {1, 3}


def test_parquet_batches_count_as_written_only_once_synced(tmp_path: Path) -> None:
    """A batch gets its part name (what --resume counts) only when flushed."""
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, _ = parquet_output(tmp_path, plan.batches)
    expected = expected_outputs(20)
    for batch in plan.batches[:2]:
        part = slice(batch.global_start, batch.global_stop)
        writer.write(batch, {"id": pa.array([f"id-{i}" for i in range(5)]),
                             **{n: a[part] for n, a in expected.items()}})
    assert parquet.written_batches(partial) == set()
    assert len(os.listdir(partial / parquet.STAGING)) == 2
    writer.sync()
    assert parquet.written_batches(partial) == {0, 1}
    assert os.listdir(partial / parquet.STAGING) == [] and writer.unsynced == []


def test_parquet_leftovers_of_a_killed_process_are_discarded(tmp_path: Path) -> None:
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    left = partial / parquet.STAGING / "part-000000002.parquet.99999.tmp"
    left.write_bytes(b"half a batch")
    expected = write_all(writer, list(plan.batches), 20)
    writer.finish(LocalWorld(), complete=True)
    assert sorted(os.listdir(final)) == part_names(plan.batches)
    check_table(ds.dataset(final).to_table(), expected)


def test_parquet_resume_keeps_journaled_batches_on_disk(tmp_path: Path) -> None:
    from mpiscore.io.registry import OutputTarget

    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    write_all(writer, [plan.batches[0], plan.batches[2]], 20)
    left = partial / parquet.STAGING / "part-000000001.parquet.4242.tmp"
    left.write_bytes(b"cut short")
    target = OutputTarget("parquet", final, overwrite=False)
    assert target.written({0, 1, 3}) == {0}  # 1 and 3 journaled but not on disk: rescored
    assert not left.exists()


def test_parquet_finish_refuses_a_missing_batch(tmp_path: Path) -> None:
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    write_all(writer, list(plan.batches), 20)
    (partial / "part-000000002.parquet").unlink()
    with pytest.raises(OutputError, match=r"part files of batches 2 are missing; rerun with "
                                          "--resume"):
        writer.finish(LocalWorld(), complete=True)
    assert partial.is_dir() and not final.exists()


def test_parquet_finish_says_what_it_does_when_it_takes_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(parquet, "LOG_FINISH_PARTS", 2)
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, _, final = parquet_output(tmp_path, plan.batches)
    write_all(writer, list(plan.batches), 20)
    with caplog.at_level("INFO", logger="mpiscore"):
        writer.finish(LocalWorld(), complete=True)
    assert f"checking the 4 part files of {final}.partial, then renaming it" in caplog.text


def test_owned_recognises_only_our_outputs(tmp_path: Path) -> None:
    plan = make_plan([SourceFile("a.parquet", 20)], 5)
    writer, partial, final = parquet_output(tmp_path, plan.batches)
    assert parquet.owned(partial)  # just created: an empty staging area marks it
    write_all(writer, list(plan.batches[:2]), 20)
    (partial / parquet.STAGING / "part-000000003.parquet.7.tmp").write_bytes(b"")
    assert parquet.owned(partial)  # part files and a half-written one
    write_all(writer, list(plan.batches[2:]), 20)
    writer.finish(LocalWorld(), complete=True)
    assert parquet.owned(final)
    assert not parquet.owned(tmp_path / "missing")
    assert not parquet.owned(final / "part-000000000.parquet")  # a file, not an output
    link = tmp_path / "link"
    link.symlink_to(final)
    assert not parquet.owned(link)


@pytest.mark.parametrize("intruder", ["notes.txt", "_staging/notes.txt", ".hidden",
                                      "part-1.parquet", "part-000000009.parquet", "empty",
                                      "subdir"])
def test_owned_refuses_directories_holding_anything_else(tmp_path: Path, intruder: str) -> None:
    plan = make_plan([SourceFile("a.parquet", 10)], 5)
    writer, _, final = parquet_output(tmp_path, plan.batches)
    write_all(writer, list(plan.batches), 10)
    writer.finish(LocalWorld(), complete=True)
    if intruder == "empty":
        for name in os.listdir(final):
            (final / name).unlink()
    elif intruder == "subdir":
        (final / "part-000000008.parquet").mkdir()
    elif intruder == "part-000000009.parquet":  # right name, but not written by mpiscore
        pq.write_table(pa.table({"x": [1]}), final / intruder)
    else:
        (final / intruder).parent.mkdir(exist_ok=True)
        (final / intruder).write_text("someone else's")
    assert not parquet.owned(final)


def test_to_arrow_shapes() -> None:
    assert parquet.to_arrow(np.arange(3)).to_pylist() == [0, 1, 2]
    nested = parquet.to_arrow(np.arange(12).reshape(2, 3, 2))
    assert nested.type.list_size == 6 and nested.to_pylist()[1] == list(range(6, 12))


# ---- input expansion -----------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_glob_is_sorted(tmp_path: Path) -> None:
    for name in ("c.h5", "a.h5", "b.h5", "skip.txt"):
        touch(tmp_path / name)
    assert expand(InputSpec(str(tmp_path / "*.h5"))) == [str(tmp_path / n)
                                                         for n in ("a.h5", "b.h5", "c.h5")]


def test_single_file(tmp_path: Path) -> None:
    path = touch(tmp_path / "x.h5")
    assert expand(InputSpec(str(path), "/features")) == [str(path)]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or directory"):
        expand(InputSpec(str(tmp_path / "nope.h5")))


def test_glob_matching_nothing_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="matches no files"):
        expand(InputSpec(str(tmp_path / "*.h5")))


def test_fill_values() -> None:
    fields = [Field("p", "<f4", (2,)), Field("label", "<i8", ()), Field("u", "|u1", ())]
    filled = fill_columns(fields, 3)
    assert np.isnan(filled["p"]).all() and filled["p"].shape == (3, 2)
    assert (filled["label"] == -1).all() and (filled["u"] == 255).all()
    assert (filled["row_status"] == 1).all()


def test_a_batch_column_is_checked_against_its_field() -> None:
    """Shape and number kind as the probe found them: text padded to the width, an
    integer as a float or a float rounded accepted, an integer narrowed refused."""
    from mpiscore.io.fields import checked_rows

    batch = Batch(0, 0, 0, 2, 0)
    text = checked_rows(np.array([b"ab", b"c"]), Field("t", "|S5", ()), batch, "o.h5:/t")
    assert text.dtype == np.dtype("S5") and text.tolist() == [b"ab", b"c"]
    assert checked_rows(np.arange(2), Field("f", "<f4", ()), batch, "o").dtype == np.float32
    with pytest.raises(OutputError, match=r"o\.h5:/n batch 0: got int64 values, expected int8"):
        checked_rows(np.arange(2), Field("n", "|i1", ()), batch, "o.h5:/n")
    with pytest.raises(OutputError, match=r"batch 0: got shape \(2, 3\), expected \(2, 2\)"):
        checked_rows(np.zeros((2, 3)), Field("w", "<f8", (2,)), batch, "o")
