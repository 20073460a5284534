"""Readers and writers on real files, without MPI (comm=None)."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mpiscore.config import InputSpec
from mpiscore.errors import InputError
from mpiscore.io import hdf5, parquet
from mpiscore.io.fields import ROW_STATUS, Field, ParquetSelection, fill_columns
from mpiscore.io.sources import expand
from mpiscore.plan import make_plan
from tests import builders


def test_hdf5_reader_spans_files(tmp_path: Path) -> None:
    a, b = builders.features(30, seed=1), builders.features(17, seed=2)
    sources = [hdf5.Hdf5Source(str(builders.write_h5(tmp_path / f"{n}.h5", chunks=8, x=d)),
                               (("features", "/x"),)) for n, d in (("a", a), ("b", b))]
    files, fields = hdf5.describe(sources)
    assert [f.rows for f in files] == [30, 17] and files[0].unit_rows == 8
    assert fields["features"].shape == (8,)
    reader = hdf5.Hdf5Reader(tuple(sources))
    rows = np.concatenate([reader.read(batch)[0]["features"]
                           for batch in make_plan(files, 10).batches])
    reader.close()
    np.testing.assert_array_equal(rows, np.concatenate([a, b]))


def test_hdf5_describe_errors(tmp_path: Path) -> None:
    path = str(builders.write_h5(tmp_path / "x.h5", x=builders.features(5)))
    with pytest.raises(InputError, match=r"x.h5:/nope: no such dataset"):
        hdf5.describe([hdf5.Hdf5Source(path, (("features", "/nope"),))])
    other = str(builders.write_h5(tmp_path / "y.h5", x=builders.features(5, width=3)))
    with pytest.raises(InputError, match="all input files must agree"):
        hdf5.describe([hdf5.Hdf5Source(p, (("features", "/x"),)) for p in (path, other)])
    with pytest.raises(InputError, match="cannot open as HDF5"):
        hdf5.describe([hdf5.Hdf5Source(str(tmp_path), (("features", "/x"),))])


def test_default_dataset(tmp_path: Path) -> None:
    one = builders.write_h5(tmp_path / "one.h5", anything=builders.features(3))
    assert hdf5.default_dataset(str(one), "features") == "/anything"
    named = builders.write_h5(tmp_path / "two.h5", features=builders.features(3),
                              other=builders.features(3))
    assert hdf5.default_dataset(str(named), "features") == "/features"
    with pytest.raises(InputError, match="holds 2 datasets"):
        hdf5.default_dataset(str(named), "pixels")


def test_hdf5_writer_out_of_order_then_complete(tmp_path: Path) -> None:
    fields = [Field("y", "<f4", (3,)), Field("label", "<i8", ()), ROW_STATUS]
    plan = make_plan([builders_source(50)], 7)
    partial, final = tmp_path / "o.h5.partial", tmp_path / "o.h5"
    offsets = hdf5.create(partial, fields, 50, {"model": "m"}, np.zeros((1, 4), np.int64))
    assert hdf5.offsets(partial, fields) == offsets
    want = {"y": np.arange(150, dtype=np.float32).reshape(50, 3),
            "label": np.arange(50) * 3, "row_status": np.zeros(50, np.uint8)}
    batches = list(plan.batches)
    random.Random(0).shuffle(batches)
    writer = hdf5.Hdf5Writer(partial, final, fields, offsets)
    for batch in batches:
        writer.write(batch, {k: v[batch.global_start:batch.global_stop] for k, v in want.items()})
    writer.close()
    with h5py.File(partial) as handle:
        assert handle.attrs["mpiscore_status"] == "incomplete"
    writer.finish(None, complete=True)
    assert not partial.exists()
    with h5py.File(final) as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        for name, values in want.items():
            np.testing.assert_array_equal(handle[name][()], values)


def builders_source(rows: int):
    from mpiscore.plan import SourceFile

    return SourceFile("x", rows)


def test_parquet_reader_row_groups_lists_and_kept_columns(tmp_path: Path) -> None:
    data = builders.features(95, width=4)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(data.reshape(-1)), 4)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": np.arange(95), "f0": data[:, 0], "f1": data[:, 1],
                             "vec": vectors}), path, row_group_size=20)
    selection = ParquetSelection((("a", ("f1", "f0")), ("b", ("vec",))), ("id",))
    files, fields, kept = parquet.describe([str(path)], selection)
    assert files[0].unit_rows == (20, 20, 20, 20, 15)
    assert fields["a"].shape == (2,) and fields["b"].shape == (4,) and fields["b"].flat
    assert list(kept) == ["id"]
    reader = parquet.ParquetReader((str(path),), selection)
    for batch in make_plan(files, 30).batches:
        arrays, carried = reader.read(batch)
        rows = slice(batch.start, batch.stop)
        np.testing.assert_array_equal(arrays["a"], data[rows][:, [1, 0]])
        np.testing.assert_array_equal(arrays["b"], data[rows])
        np.testing.assert_array_equal(carried["id"].to_numpy(), np.arange(95)[rows])


def test_parquet_describe_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"f0": [1.0], "name": ["a"]}), path)
    with pytest.raises(InputError, match="no column 'zz'"):
        parquet.describe([path], ParquetSelection((("a", ("f0", "zz")),)))
    with pytest.raises(InputError, match=r"not name \(string\)"):
        parquet.describe([path], ParquetSelection((("a", ("f0", "name")),)))
    schema = parquet.read_schema(path)
    assert parquet.match_columns(path, schema, ["f*"]) == ("f0",)
    assert parquet.numeric_columns(schema, []) == ("f0",)


def test_parquet_writer_stages_then_merges_in_row_order(tmp_path: Path) -> None:
    fields = [Field("y", "<f4", (2,)), ROW_STATUS]
    kept = [Field("id", "<i8", ())]
    plan = make_plan([builders_source(40)], 6)
    partial, final = tmp_path / "o.parquet.partial", tmp_path / "o.parquet"
    parquet.create(partial)
    writer = parquet.ParquetWriter(partial, final, fields, kept, plan.batches, {"model": "m"})
    y = np.arange(80, dtype=np.float32).reshape(40, 2)
    for batch in reversed(plan.batches):
        rows = slice(batch.global_start, batch.global_stop)
        writer.write(batch, {"id": pa.array(np.arange(40)[rows]), "y": y[rows],
                             "row_status": np.zeros(batch.rows, np.uint8)})
    assert parquet.staged_batches(partial) == {b.batch_id for b in plan.batches}
    writer.finish(None, complete=True)
    table = ds.dataset(final).to_table()
    assert table.column_names == ["id", "y", "row_status"]
    np.testing.assert_array_equal(table["id"].to_numpy(), np.arange(40))
    np.testing.assert_array_equal(np.stack(table["y"].to_numpy(zero_copy_only=False)), y)
    assert len(list(final.glob("part-*.parquet"))) == 1


def test_group_batches_by_size() -> None:
    plan = make_plan([builders_source(100)], 10)
    assert parquet.group_batches(plan.batches, 1, 25) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert parquet.group_batches(plan.batches, 100, 25) == [[i] for i in range(10)]


def test_fill_values() -> None:
    fields = [Field("p", "<f4", (2,)), Field("label", "<i8", ()), Field("u", "|u1", ())]
    filled = fill_columns(fields, 3)
    assert np.isnan(filled["p"]).all() and filled["p"].shape == (3, 2)
    assert (filled["label"] == -1).all() and (filled["u"] == 255).all()
    assert (filled["row_status"] == 1).all()


def test_expand_inputs(tmp_path: Path) -> None:
    for name in ("b.h5", "a.h5", "c.txt"):
        (tmp_path / name).write_text("")
    assert expand(InputSpec(f"{tmp_path}/*.h5")) == [f"{tmp_path}/a.h5", f"{tmp_path}/b.h5"]
    folder = tmp_path / "ds"
    (folder / "_tmp").mkdir(parents=True)
    for name in ("p1.parquet", "p0.parquet", "_meta.parquet", ".hidden.parquet"):
        (folder / name).write_text("")
    (folder / "_tmp" / "x.parquet").write_text("")
    assert expand(InputSpec(str(folder))) == [f"{folder}/p0.parquet", f"{folder}/p1.parquet"]
    with pytest.raises(InputError, match="no such file"):
        expand(InputSpec(str(tmp_path / "missing.h5")))
    with pytest.raises(InputError, match="matches no files"):
        expand(InputSpec(f"{tmp_path}/*.nothing"))
