"""Under mpiexec -n 2: a skl2onnx classifier with ZipMap and string labels, to HDF5 and
Parquet, against plain onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import builders, sklearn_models
from tests.mpi.launch import mpiscore
from tests.unit.test_outputs import assert_same, expected_columns, read_output


@pytest.mark.parametrize("output", ["scores.h5", "scores.parquet"])
def test_zipmap_string_labels_on_two_ranks(tmp_path: Path, output: str) -> None:
    model = sklearn_models.classifier(tmp_path / "clf.onnx", "forest", "str")
    x, _ = sklearn_models.training_data(seed=2)
    data = builders.write_h5(tmp_path / "x.h5", chunks=50, features=x)
    result = mpiscore(2, "--model", model, "--input", f"{data}:/features",
                      "--output", tmp_path / output, "--mini-batch-size", 50,
                      "--intra-op-threads", 1)
    assert result.returncode == 0, result.stderr
    want = expected_columns(sklearn_models.reference(model, x))
    assert_same(read_output(tmp_path / output), want)
