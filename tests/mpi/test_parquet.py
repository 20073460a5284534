"""Parquet under mpiexec -n 2/3: the default feature columns, and an output every reader reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import builders
from tests.mpi.launch import error_lines, mpiscore

ROWS = 1003


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The README's example layout: a directory of files with ``id``, ``f0..f15``, ``label``."""
    folder = tmp_path_factory.mktemp("example")
    x = builders.features(ROWS, 16, seed=21)
    data = folder / "blobs.parquet"
    data.mkdir()
    for part, rows in enumerate(np.array_split(np.arange(ROWS), 3)):
        columns = {"id": rows, **{f"f{i}": x[rows, i] for i in range(16)},
                   "label": np.zeros(len(rows), np.int64)}
        pq.write_table(pa.table(columns), data / f"part-{part}.parquet", row_group_size=200)
    return {"model": builders.mlp(folder / "mlp16.onnx", features=16), "data": data, "x": x}


def test_readme_parquet_without_columns_fails_once_with_the_fix(example, tmp_path) -> None:
    out = tmp_path / "labels.parquet"
    result = mpiscore(2, "--model", example["model"], "--input", example["data"],
                      "--output", out, timeout=60)
    lines = error_lines(result)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    for part in ("ConfigError", "part-0.parquet", "'features' (16 values per row)",
                 "numeric columns id, f0", "--columns 'f*'"):
        assert part in lines[0], (part, lines[0])
    assert not out.exists() and not Path(f"{out}.partial").exists()


@pytest.mark.parametrize("ranks", [2, 3])
def test_readme_parquet_with_columns_reads_back_everywhere(example, tmp_path, ranks) -> None:
    import duckdb
    import polars as pl

    out = tmp_path / "labels.parquet"
    result = mpiscore(ranks, "--model", example["model"], "--input", example["data"],
                      "--columns", "f*", "--keep-columns", "id", "--output", out,
                      "--mini-batch-size", 128, "--intra-op-threads", 1)
    assert result.returncode == 0, result.stderr
    assert all(name.startswith("part-") and name.endswith(".parquet")
               for name in os.listdir(out))
    want = builders.reference(example["model"], features=example["x"])
    frame = pl.read_parquet(out)
    assert frame["id"].to_list() == list(range(ROWS))
    builders.assert_close(frame["logits"].to_numpy(), want["logits"], "logits")
    rows = duckdb.sql(f"SELECT id, label FROM read_parquet('{out}/*')").fetchall()
    assert [r[0] for r in rows] == list(range(ROWS))
    builders.assert_close(np.array([r[1] for r in rows]), want["label"], "label")
