"""Under a real mpiexec: click's own messages and rank 0's first lines appear once per job."""

from __future__ import annotations

from tests import builders
from tests.mpi.launch import mpiscore


def test_option_typo_printed_once_with_exit_code_2(tmp_path) -> None:
    result = mpiscore(2, "--modle", "m.onnx", "--input", "x.h5", "--output", tmp_path / "y.h5")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("No such option '--modle'.") == 1, result.stderr
    assert "'--model'" in result.stderr  # click's suggestion
    assert result.stderr.count("Usage:") == 1


def test_first_lines_once_from_rank_0(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(300))
    result = mpiscore(2, "--model", model, "--input", path, "--output", tmp_path / "y.h5",
                      "--mini-batch-size", 100)
    assert result.returncode == 0, result.stderr
    for text in ("INFO starting 2 ranks x 1 scoring process", "INFO loading model",
                 "INFO planned 3 batches of <= 100 rows (300 rows, 1 file)",
                 "INFO complete: "):
        assert result.stderr.count(text) == 1, (text, result.stderr)
    assert all(" rank 0/2 " in line for line in result.stderr.splitlines() if " INFO " in line)
