"""Bad input: one line naming the culprit, non-zero exit, no hang, no complete-looking output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests import builders
from tests.mpi.launch import error_lines, mpiscore


@pytest.fixture
def job(tmp_path: Path) -> dict[str, Path]:
    data = builders.features(100)
    return {
        "model": builders.mlp(tmp_path / "mlp.onnx"),
        "h5": builders.write_h5(tmp_path / "x.h5", features=data),
        "parquet": builders.write_parquet(tmp_path / "x.parquet", data, np.arange(100)),
        "out": tmp_path / "scores.h5",
        "dir": tmp_path,
    }


def fails(ranks: int, job: dict[str, Path], *args: object, code: int, names: list[str]) -> None:
    """Run, and check the exit code, the single error line and that no output appeared."""
    args = args or ("--input", job["h5"])
    argv = ["--model", job["model"], "--output", job["out"], *args]
    result = mpiscore(ranks, *argv, timeout=60)
    lines = error_lines(result)
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert not job["out"].exists()


RANKS = [1, 2, 3]


@pytest.mark.parametrize("ranks", RANKS)
def test_missing_input_file(job, ranks) -> None:
    missing = job["dir"] / "nope.h5"
    fails(ranks, job, "--input", f"{missing}:/features", code=3, names=["InputError", str(missing)])


@pytest.mark.parametrize("ranks", RANKS)
def test_missing_dataset(job, ranks) -> None:
    fails(ranks, job, "--input", f"{job['h5']}:/nothing", code=3,
          names=[str(job["h5"]), "/nothing", "no such dataset"])


@pytest.mark.parametrize("ranks", [2])
def test_missing_column(job, ranks) -> None:
    out = job["dir"] / "scores.parquet"
    job["out"] = out
    fails(ranks, job, "--input", job["parquet"], "--columns", "f0,f1,zz", code=3,
          names=[str(job["parquet"]), "'zz'"])


@pytest.mark.parametrize("ranks", [2])
def test_model_input_name_mismatch(job, ranks) -> None:
    fails(ranks, job, "--input", job["h5"], "--map", "pixels=/features", code=4,
          names=["ModelError", "features", "pixels"])


@pytest.mark.parametrize("ranks", [2, 3])
def test_data_rank_mismatch(job, ranks) -> None:
    path = builders.write_h5(job["dir"] / "cube.h5", features=np.zeros((10, 4, 2), np.float32))
    fails(ranks, job, "--input", path, code=4,
          names=[f"{path}:/features", "'features'", "(4, 2)"])


@pytest.mark.parametrize("ranks", [2])
def test_data_shape_mismatch(job, ranks) -> None:
    path = builders.write_h5(job["dir"] / "narrow.h5", features=builders.features(10, width=5))
    fails(ranks, job, "--input", path, code=4, names=[f"{path}:/features", "(5,)"])


@pytest.mark.parametrize("ranks", [2])
def test_lossy_dtype_needs_cast_option(job, ranks) -> None:
    path = builders.write_h5(job["dir"] / "f64.h5",
                             features=builders.features(10, dtype="float64"))
    fails(ranks, job, "--input", path, code=4, names=["float64", "float32", "--cast same_kind"])
    result = mpiscore(ranks, "--model", job["model"], "--input", path, "--output", job["out"],
                      "--cast", "same_kind", timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_not_an_onnx_model(job, ranks) -> None:
    job["model"].write_text("this is not a model\n")
    fails(ranks, job, code=4, names=["ModelError", str(job["model"])])


@pytest.mark.parametrize("ranks", [2])
def test_missing_model(job, ranks) -> None:
    job["model"] = job["dir"] / "absent.onnx"
    fails(ranks, job, code=4, names=[str(job["model"])])


@pytest.mark.parametrize("ranks", [2])
def test_empty_input(job, ranks) -> None:
    path = builders.write_h5(job["dir"] / "empty.h5", features=np.zeros((0, 8), np.float32))
    fails(ranks, job, "--input", path, code=3, names=[str(path), "no rows"])


@pytest.mark.parametrize("ranks", [1, 2])
def test_existing_output_needs_overwrite(job, ranks) -> None:
    job["out"].write_text("precious")
    result = mpiscore(ranks, "--model", job["model"], "--input", job["h5"],
                      "--output", job["out"], timeout=60)
    assert result.returncode == 6 and "--overwrite" in error_lines(result)[0]
    assert job["out"].read_text() == "precious"
    args = ("--model", job["model"], "--input", job["h5"], "--output", job["out"], "--overwrite")
    result = mpiscore(ranks, *args, timeout=60)  # not mpiscore's: never deleted
    assert result.returncode == 6 and "did not write" in error_lines(result)[0]
    assert job["out"].read_text() == "precious"
    job["out"].unlink()
    for _ in range(2):  # an output of mpiscore's is replaced
        result = mpiscore(ranks, *args, timeout=60)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("ranks", [2])
def test_output_directory_missing_or_not_a_directory(job, ranks) -> None:
    job["out"] = job["dir"] / "no" / "such" / "scores.h5"
    fails(ranks, job, code=6, names=["OutputError", "does not exist"])
    job["out"] = job["h5"] / "scores.h5"
    fails(ranks, job, code=6, names=["OutputError", str(job["h5"])])


@pytest.mark.parametrize("ranks", [2])
def test_bad_option_values(job, ranks) -> None:
    fails(ranks, job, "--input", job["h5"], "--mini-batch-size", "lots", code=2,
          names=["--mini-batch-size", "'lots'"])


def even_rows_model(path: Path) -> Path:
    """An MLP-shaped model that only accepts an even number of rows (Reshape to pairs)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["features", "pairs"], ["p"]),
         helper.make_node("Reshape", ["p", "rows"], ["y"])],
        "even_rows",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor("pairs", TensorProto.INT64, [3], [-1, 2, 8]),
         helper.make_tensor("rows", TensorProto.INT64, [2], [-1, 8])])
    model = helper.make_model(graph, opset_imports=builders.OPSET, ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("ranks", [2, 3])
def test_batch_failing_for_good_stops_the_job(job, ranks) -> None:
    """A batch failing on every try stops the job cleanly (default budget 0); output partial."""
    job["model"] = even_rows_model(job["dir"] / "even.onnx")
    data = builders.features(2001)
    path = builders.write_h5(job["dir"] / "odd.h5", features=data)
    started = time.monotonic()
    result = mpiscore(ranks, "--model", job["model"], "--input", path, "--output", job["out"],
                      "--mini-batch-size", 200, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 5, result.stderr
    line = error_lines(result)[0]
    assert "ScoringError: error budget exceeded" in line, line
    assert "batch 10 (rows 2000-2000) on rank" in line, line
    assert f"of {ranks}" in line
    assert not job["out"].exists()
    assert Path(f"{job['out']}.partial").exists()
    summary = json.loads(Path(f"{job['out']}.run/summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["stop_reason"].startswith("error budget exceeded")


def test_null_ids_cannot_go_to_hdf5(job) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = builders.features(6)
    ids = pa.array([1, None, 3, 4, 5, 6], pa.int64())
    path = job["dir"] / "nulls.parquet"
    pq.write_table(pa.table({"id": ids, **{f"f{i}": data[:, i] for i in range(8)}}), path)
    result = mpiscore(2, "--model", job["model"], "--input", path, "--columns", "f*",
                      "--keep-columns", "id", "--output", job["out"], timeout=60)
    assert result.returncode == 5, result.stderr
    assert "null values, which HDF5 cannot hold" in error_lines(result)[0]
    assert not job["out"].exists()
