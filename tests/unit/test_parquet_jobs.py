"""Parquet jobs through ``mpiscore.run(config, comm=None)``: which columns are features, and
what the finished output looks like to the readers people use (pyarrow, pandas, polars, DuckDB).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpiscore import (
    BatchSize,
    ConfigError,
    InputError,
    InputSpec,
    JobConfig,
    ModelError,
    SessionConfig,
    run,
)
from mpiscore.io import parquet
from tests import builders

ROWS = 1003


def job(tmp_path: Path, model: Path, data: Path, **options: object) -> JobConfig:
    values: dict = {"model": model, "inputs": (InputSpec(str(data)),),
                    "output": tmp_path / "scores.parquet", "batch_size": BatchSize(rows=100),
                    "session": SessionConfig(intra_op_threads=1), "progress_seconds": 60.0,
                    **options}
    return JobConfig(**values)


def example_parquet(path: Path, features: np.ndarray, label_dtype: str = "int64") -> Path:
    """Like examples/make_data.py: ``id``, ``f0..f15``, ``label``."""
    rows = len(features)
    columns = {"id": np.arange(rows), **{f"f{i}": features[:, i] for i in range(16)},
               "label": np.zeros(rows, label_dtype)}
    pq.write_table(pa.table(columns), path, row_group_size=300)
    return path


@pytest.fixture
def mlp16(tmp_path: Path) -> Path:
    return builders.mlp(tmp_path / "mlp16.onnx", features=16)


def scores(out: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    assert not table["row_status"].to_numpy().any()
    return {"logits": np.stack(table["logits"].to_numpy(zero_copy_only=False)),
            "label": table["label"].to_numpy()}


def assert_scored_like(out: Path, model: Path, data: np.ndarray) -> None:
    builders.assert_matches(scores(out), builders.reference(model, features=data))


# ---- which columns are features (issue 10, item 1) ------------------------------------------


def test_readme_example_without_columns_is_refused_with_the_fix(tmp_path, mlp16) -> None:
    """id, f0..f15, label: "every numeric column" stacked id and label in (and then failed on a
    cast); now one line says which columns there are, what the model needs and what to pass."""
    data = example_parquet(tmp_path / "x.parquet", builders.features(ROWS, 16))
    with pytest.raises(ConfigError) as caught:
        run(job(tmp_path, mlp16, data), comm=None)
    message = str(caught.value)
    assert "\n" not in message
    for part in (str(data), "'features'", "16 values per row", "id, f0, f1",
                 "... and 10 more", "--columns 'f*'"):
        assert part in message, (part, message)
    assert not (tmp_path / "scores.parquet").exists()
    assert not (tmp_path / "scores.parquet.partial").exists()


def test_id_never_scored_when_the_widths_happen_to_match(tmp_path, mlp16) -> None:
    """id int64 + f0..f14 float64 is 16 wide: this used to complete, exit 0, id a feature."""
    x = builders.features(ROWS, 15, dtype="float64")
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": np.arange(ROWS), **{f"f{i}": x[:, i] for i in range(15)}}),
                   path)
    with pytest.raises(ConfigError, match=r"numeric columns id, f0.*--columns 'f\*'"):
        run(job(tmp_path, mlp16, path, session=SessionConfig(intra_op_threads=1,
                                                             cast="same_kind")), comm=None)
    assert not (tmp_path / "scores.parquet").exists()


def test_columns_glob_scores_the_readme_example(tmp_path, mlp16) -> None:
    x = builders.features(ROWS, 16)
    data = example_parquet(tmp_path / "x.parquet", x)
    run(job(tmp_path, mlp16, data, columns=("f*",), keep_columns=("id",)), comm=None)
    assert_scored_like(tmp_path / "scores.parquet", mlp16, x)
    assert pq.read_table(tmp_path / "scores.parquet")["id"].to_pylist() == list(range(ROWS))


def test_column_named_like_the_input_is_used(tmp_path, mlp16) -> None:
    x = builders.features(ROWS, 16)
    path = tmp_path / "x.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)
    other = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(ROWS * 16, np.float32)), 16)
    pq.write_table(pa.table({"id": np.arange(ROWS), "other": other, "features": vectors}), path)
    run(job(tmp_path, mlp16, path), comm=None)
    assert_scored_like(tmp_path / "scores.parquet", mlp16, x)


def test_scalar_column_named_like_a_one_wide_input_is_used(tmp_path) -> None:
    model = builders.mlp(tmp_path / "mlp1.onnx", features=1)
    x = builders.features(ROWS, 1)
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": np.arange(ROWS), "features": x[:, 0]}), path)
    run(job(tmp_path, model, path), comm=None)
    assert_scored_like(tmp_path / "scores.parquet", model, x)


def test_scalar_column_named_like_a_wide_input_is_not_a_guess(tmp_path, mlp16) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"features": np.zeros(5, np.float32),
                             "g": np.zeros(5, np.float32)}), path)
    with pytest.raises(ConfigError, match="numeric columns features, g; name them"):
        run(job(tmp_path, mlp16, path), comm=None)


def test_the_only_list_column_is_used(tmp_path, mlp16) -> None:
    x = builders.features(ROWS, 16)
    path = tmp_path / "x.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)
    pq.write_table(pa.table({"id": np.arange(ROWS), "vec": vectors,
                             "label": np.zeros(ROWS, np.int64)}), path, row_group_size=250)
    run(job(tmp_path, mlp16, path, keep_columns=("id",)), comm=None)
    assert_scored_like(tmp_path / "scores.parquet", mlp16, x)


def test_several_list_columns_are_not_a_guess(tmp_path, mlp16) -> None:
    path = tmp_path / "x.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(32, np.float32)), 16)
    pq.write_table(pa.table({"a": vectors, "b": vectors}), path)
    with pytest.raises(ConfigError, match=r"several fixed-size-list columns .*: a, b; pick one"):
        run(job(tmp_path, mlp16, path), comm=None)


def test_kept_list_column_is_not_the_feature_guess(tmp_path, mlp16) -> None:
    path = tmp_path / "x.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(32, np.float32)), 16)
    pq.write_table(pa.table({"emb": vectors, "x0": np.zeros(2, np.float32)}), path)
    with pytest.raises(ConfigError, match="numeric columns x0; name them: --columns 'x\\*'"):
        run(job(tmp_path, mlp16, path, keep_columns=("emb",)), comm=None)


def test_float64_columns_advise_same_kind_and_it_is_right(tmp_path, mlp16) -> None:
    x = builders.features(ROWS, 16, dtype="float64")
    data = example_parquet(tmp_path / "x.parquet", x)
    with pytest.raises(ModelError, match=r"the data is float64, the model input float32; "
                                         r"pass --cast same_kind to round it to float32"):
        run(job(tmp_path, mlp16, data, columns=("f*",)), comm=None)
    run(job(tmp_path, mlp16, data, columns=("f*",), session=SessionConfig(
        intra_op_threads=1, cast="same_kind")), comm=None)
    assert_scored_like(tmp_path / "scores.parquet", mlp16, x.astype(np.float32))


def test_integer_data_for_a_float_model_does_not_advise_a_cast_first(tmp_path, mlp16) -> None:
    """The old advice (--cast same_kind) turned a wrong column choice into a wrong result."""
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({f"c{i}": np.arange(5) for i in range(16)}), path)
    with pytest.raises(ModelError) as caught:
        run(job(tmp_path, mlp16, path, columns=("c*",)), comm=None)
    message = str(caught.value)
    assert "cannot cast int64 to float32 under --cast safe" in message
    assert "check which data feeds this input (--columns, --map)" in message
    assert "round" not in message


# ---- --columns of several dtypes: each column judged by its own ------------------------------

MIXED = [f"f{i}" for i in range(7)] + ["id"]  # the audit's --columns f0,...,f6,id


@pytest.fixture
def mlp8(tmp_path: Path) -> Path:
    return builders.mlp(tmp_path / "mlp8.onnx", features=8)


def test_int_column_among_float32_columns_is_named_not_called_float64(tmp_path, mlp8) -> None:
    """int64 id + float32 features promoted to float64: the message said "the data is
    float64", and its advice (--cast same_kind) completed with id scored as a feature."""
    data = builders.write_parquet(tmp_path / "x.parquet", builders.features(ROWS), np.arange(ROWS))
    with pytest.raises(ModelError) as caught:
        run(job(tmp_path, mlp8, data, columns=tuple(MIXED)), comm=None)
    message = str(caught.value)
    assert "\n" not in message
    for part in (f"{data}:f0,...,id (8 columns) -> {mlp8} input 'features'",
                 "cannot cast int64 to float32 under --cast safe: column id is int64 among "
                 "float32 columns", "check which data feeds this input (--columns, --map)",
                 "only if id values are meant for it"):
        assert part in message, (part, message)
    assert "float64" not in message and "round" not in message
    assert not (tmp_path / "scores.parquet").exists()
    assert not (tmp_path / "scores.parquet.partial").exists()


def test_int_column_among_float_columns_under_same_kind_is_scored_as_asked(tmp_path,
                                                                           mlp8) -> None:
    """--cast same_kind says id's values are meant (as for an int64 column alone): each
    column is cast to float32 on its own, and the rows are what the model gives for them."""
    x = builders.features(ROWS)
    data = builders.write_parquet(tmp_path / "x.parquet", x, np.arange(ROWS))
    run(job(tmp_path, mlp8, data, columns=tuple(MIXED),
            session=SessionConfig(intra_op_threads=1, cast="same_kind")), comm=None)
    fed = np.column_stack([x[:, :7], np.arange(ROWS, dtype=np.float32)])
    assert_scored_like(tmp_path / "scores.parquet", mlp8, fed)


def test_float64_and_float32_columns_advise_same_kind_for_the_float64_ones(tmp_path,
                                                                          mlp8) -> None:
    x = builders.features(ROWS)
    wide = {f"f{i}": x[:, i].astype(np.float64) if i < 3 else x[:, i] for i in range(8)}
    data = tmp_path / "x.parquet"
    pq.write_table(pa.table(wide), data)
    with pytest.raises(ModelError, match=r"columns f0, f1, f2 are float64 \(the others "
                                         r"float32\), the model input float32; pass --cast "
                                         r"same_kind to round them to float32$"):
        run(job(tmp_path, mlp8, data, columns=("f*",)), comm=None)
    run(job(tmp_path, mlp8, data, columns=("f*",), session=SessionConfig(
        intra_op_threads=1, cast="same_kind")), comm=None)
    fed = np.column_stack([wide[f"f{i}"].astype(np.float32) for i in range(8)])
    assert_scored_like(tmp_path / "scores.parquet", mlp8, fed)


def test_files_must_agree_column_by_column(tmp_path, mlp8) -> None:
    """Both files promote to float64, but the binding judges the first file's columns: a
    second file's int64 column would be stacked in unjudged."""
    x = builders.features(ROWS, dtype="float64")
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(8)}), first)
    pq.write_table(pa.table({"f0": np.arange(ROWS), **{f"f{i}": x[:, i] for i in range(1, 8)}}),
                   second)
    config = job(tmp_path, mlp8, first, columns=("f*",),
                 session=SessionConfig(intra_op_threads=1, cast="same_kind"))
    config = replace(config, inputs=(InputSpec(str(first)), InputSpec(str(second))))
    with pytest.raises(InputError, match=rf"{second}:f0,...,f7 \(8 columns\): column f0 is "
                                         rf"int64, in {first}:f0,...,f7 \(8 columns\) float64; "
                                         "all files must agree"):
        run(config, comm=None)
    assert not (tmp_path / "scores.parquet").exists()


# ---- the finished output, as common readers see it (item 3) ---------------------------------


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """A 1003-row job in 11 batches, ids carried, kept in input row order."""
    model = builders.mlp(tmp_path / "mlp.onnx")
    x = builders.features(ROWS)
    ids = np.arange(ROWS) * 7 + 11
    path = builders.write_parquet(tmp_path / "x.parquet", x, ids, row_group_size=100)
    run(job(tmp_path, model, path, columns=("f*",), keep_columns=("id",)), comm=None)
    return tmp_path / "scores.parquet", ids, builders.reference(model, features=x)


def test_output_directory_holds_only_part_files_with_provenance(finished) -> None:
    out, _, _ = finished
    names = sorted(os.listdir(out))
    assert names == [f"part-{i:09d}.parquet" for i in range(11)]
    for index, name in enumerate(names):
        info = json.loads(pq.read_metadata(out / name).metadata[b"mpiscore"])
        assert info["status"] == "complete" and info["batch_id"] == index
        assert info["rows"] == ROWS and info["batches"] == 11
        assert info["model"].endswith("mlp.onnx") and len(info["model_sha256"]) == 64
        assert info["output_shapes"] == {"logits": [3], "label": [], "row_status": []}
    assert parquet.owned(out)


def check_frame(ids: list, logits: np.ndarray, labels: np.ndarray, want: dict) -> None:
    assert list(ids) == list(np.arange(ROWS) * 7 + 11)
    builders.assert_close(logits, want["logits"], "logits")
    builders.assert_close(labels, want["label"], "label")


def test_pyarrow_dataset_reads_one_table_in_row_order(finished) -> None:
    import pyarrow.dataset as ds

    out, _, want = finished
    table = ds.dataset(out).to_table()
    assert table.column_names == ["id", "logits", "label", "row_status"]
    width = table.schema.field("logits").type.list_size
    logits = table["logits"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    check_frame(table["id"].to_pylist(), logits, table["label"].to_numpy(), want)


def test_pandas_reads_one_table_in_row_order(finished) -> None:
    import pandas as pd

    out, _, want = finished
    frame = pd.read_parquet(out)
    check_frame(frame["id"].tolist(), np.stack(frame["logits"].to_numpy()),
                frame["label"].to_numpy(), want)


@pytest.mark.parametrize("where", ["directory", "glob"])
def test_polars_reads_one_table_in_row_order(finished, where) -> None:
    import polars as pl

    out, _, want = finished
    frame = pl.read_parquet(out if where == "directory" else f"{out}/*.parquet")
    check_frame(frame["id"].to_list(), frame["logits"].to_numpy(), frame["label"].to_numpy(),
                want)


def test_duckdb_reads_one_table_in_row_order(finished) -> None:
    import duckdb

    out, _, want = finished
    connection = duckdb.connect()
    rows = connection.execute(f"SELECT id, logits, label FROM read_parquet('{out}/*')").fetchall()
    connection.close()
    check_frame([r[0] for r in rows], np.array([r[1] for r in rows], np.float32),
                np.array([r[2] for r in rows]), want)
