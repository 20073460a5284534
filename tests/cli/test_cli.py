"""The command line in-process with click's CliRunner: messages and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mpiscore import __version__
from mpiscore.cli import main
from tests import builders


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help() -> None:
    assert __version__ in invoke("--version").output
    result = invoke("score", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--input", "--output", "--mini-batch-size", "--keep-columns"):
        assert option in result.output


def test_score_in_process(tmp_path) -> None:
    data = builders.features(50)
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=data)
    out = tmp_path / "y.h5"
    result = invoke("score", "--model", model, "--input", path, "--output", out,
                    "--mini-batch-size", 16)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["label"][()],
                                      builders.reference(model, features=data)["label"])


def test_missing_required_option() -> None:
    result = invoke("score", "--model", "m.onnx")
    assert result.exit_code == 2
    assert "--input" in result.output


def test_bad_pair_is_a_config_error(tmp_path) -> None:
    result = invoke("score", "--model", "m.onnx", "--input", "x.h5", "--output",
                    tmp_path / "y.h5", "--map", "no-equals-sign")
    assert result.exit_code == 2
    assert "mpiscore: ConfigError: --map 'no-equals-sign': expected NAME=VALUE" in result.output


def test_bad_input_exit_code_and_single_line(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    result = invoke("score", "--model", model, "--input", tmp_path / "absent.h5",
                    "--output", tmp_path / "y.h5")
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.startswith("mpiscore:")]
    assert lines == [f"mpiscore: InputError: --input {tmp_path / 'absent.h5'}: "
                     "no such file or directory"]


def test_ranks_never_load_onnxruntime(tmp_path) -> None:
    """Rank 0's first scoring process checks the job and loads the model; the rank
    itself stays free of onnxruntime (its import and session cost start-up time)."""
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(40))
    code = ("import sys; from pathlib import Path; import mpiscore; "
            f"mpiscore.run(mpiscore.JobConfig(model=Path({str(model)!r}), "
            f"inputs=(mpiscore.InputSpec({str(path)!r}),), output=Path({str(tmp_path)!r}) / "
            "'y.h5')); print('onnxruntime' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    with h5py.File(tmp_path / "y.h5") as handle:
        assert handle["label"].shape == (40,)


def test_int_column_among_float_columns_exits_like_an_int_column_alone(tmp_path) -> None:
    """--columns f0,...,f6,id: int64 id with float32 features was judged as float64 data;
    now it is refused as the int64 column alone is, naming it, exit 4, no output."""
    model = builders.mlp(tmp_path / "m.onnx", features=8)
    path = builders.write_parquet(tmp_path / "x.parquet", builders.features(50), np.arange(50))
    out = tmp_path / "y.parquet"
    alone = invoke("score", "--model", model, "--input", path, "--columns", "id",
                   "--output", out, "--intra-op-threads", 1)
    mixed = invoke("score", "--model", model, "--input", path, "--columns",
                   "f0,f1,f2,f3,f4,f5,f6,id", "--output", out, "--intra-op-threads", 1)
    assert alone.exit_code == mixed.exit_code == 4, (alone.output, mixed.output)
    assert "cannot cast int64 to float32 under --cast safe" in alone.output
    lines = [line for line in mixed.output.splitlines() if line.startswith("mpiscore:")]
    assert len(lines) == 1 and "Traceback" not in mixed.output
    assert lines[0].startswith(f"mpiscore: ModelError: {path}:f0,...,id (8 columns) -> ")
    assert "column id is int64 among float32 columns" in lines[0]
    assert "check which data feeds this input (--columns, --map)" in lines[0]
    assert not out.exists() and not (tmp_path / "y.parquet.partial").exists()


def test_a_glob_of_files_holding_differently_named_datasets_is_refused(tmp_path) -> None:
    """Each file's only dataset is no choice at all once the names differ: the first
    file's choice holds, and a file without it is named, with the dataset it holds."""
    model = builders.mlp(tmp_path / "m.onnx")
    builders.write_h5(tmp_path / "a.h5", energy=builders.features(10))
    builders.write_h5(tmp_path / "b.h5", momentum=builders.features(10, seed=1))
    out = tmp_path / "y.h5"
    result = invoke("score", "--model", model, "--input", tmp_path / "*.h5", "--output", out)
    assert result.exit_code == 3, result.output
    assert f"{tmp_path / 'b.h5'}:/energy: no such dataset; the file holds /momentum" \
        in result.output
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".h5", ".parquet"])
def test_an_output_whose_width_differs_by_batch_fails_those_batches(tmp_path, suffix) -> None:
    """The probe's width is the output's: a batch of another width fails, named, and
    never becomes a part of another schema (Parquet) or rows of another layout."""
    model = builders.data_width(tmp_path / "w.onnx")
    data = builders.features(30, 4)
    data[:, 0] = np.repeat([2.0, 3.0, 2.0], 10)  # batch 1 is 3 wide, the others 2
    path = builders.write_h5(tmp_path / "x.h5", features=data)
    out = tmp_path / f"y{suffix}"
    result = invoke("score", "--model", model, "--input", path, "--output", out,
                    "--mini-batch-size", 10, "--max-retries", 0)
    assert result.exit_code == 5, result.output
    assert "batch 1: got shape (10, 3), expected (10, 2)" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize(("returned", "suffix", "said"), [
    ('pd.DataFrame({"_mpiscore": mb.sum(axis=1)})', ".h5",
     "output '_mpiscore': names starting with _mpiscore are mpiscore's own in HDF5 output"),
    ('pd.DataFrame({"t": pd.to_datetime(mb[:, 0].astype("int64"), unit="s")})', ".h5",
     "output 't': datetime64["),  # [ns] or [us], by the pandas
    ("mb[:, 0].astype(np.complex64)", ".parquet",
     "output 'result': complex values cannot go to Parquet output"),
], ids=["reserved-name", "datetime-to-hdf5", "complex-to-parquet"])
def test_a_script_column_the_output_cannot_hold_is_one_line_before_anything_is_written(
        tmp_path, returned, suffix, said) -> None:
    script = tmp_path / "s.py"
    script.write_text(f"import numpy as np\nimport pandas as pd\n\ndef run(mb):\n"
                      f"    return {returned}\n")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    out = tmp_path / f"y{suffix}"
    result = invoke("score", "--entry-script", script, "--input", data, "--output", out,
                    "--batch-format", "numpy", "--mini-batch-size", 10)
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("mpiscore:")]
    assert said in line and "Traceback" not in result.output, line
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_keeping_a_column_called_row_status_says_it_is_mpiscore_s_own(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx", features=4)
    data = builders.write_parquet(tmp_path / "x.parquet", builders.features(20, 4),
                                  np.arange(20))
    renamed = tmp_path / "r.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(data).rename_columns(["row_status", "f0", "f1", "f2", "f3"]),
                   renamed)
    result = invoke("score", "--model", model, "--input", renamed, "--columns", "f*",
                    "--keep-columns", "row_status", "--output", tmp_path / "y.parquet")
    assert result.exit_code == 2, result.output
    assert "--keep-columns row_status: the name of mpiscore's own per-row status column" \
        in result.output and "--rename" not in result.output, result.output


def test_a_dry_run_on_an_output_a_live_job_holds_says_what_the_job_would(tmp_path) -> None:
    import dataclasses
    import json
    import os

    from mpiscore.lock import LockOwner

    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    out = tmp_path / "y.h5"
    holder = dataclasses.replace(LockOwner.here(), pid=os.getppid(), token="live")
    Path(f"{out}.lock").write_text(json.dumps(dataclasses.asdict(holder)))
    result = invoke("score", "--model", model, "--input", data, "--output", out, "--dry-run")
    assert result.exit_code == 6, result.output
    assert f"{out}: in use by another mpiscore job" in result.output, result.output
    assert Path(f"{out}.lock").exists()


@pytest.mark.parametrize(("fault", "said"), [
    ("hang:1", "first failure: batch 1: batch timed out after"),
    ("kill:1", "first failure: batch 1: scoring process on rank 0"),
])
def test_the_first_failure_names_its_batch_when_the_rank_reported_it(tmp_path, fault,
                                                                     said) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(30))
    result = CliRunner().invoke(main, [str(a) for a in (
        "score", "--model", model, "--input", data, "--output", tmp_path / "y.h5",
        "--mini-batch-size", 10, "--max-retries", 0, "--batch-timeout", 2)],
        env={"MPISCORE_FAULTS": fault})
    assert result.exit_code == 5, result.output
    assert said in result.output, result.output


def test_a_script_failing_on_the_first_rows_says_it_was_before_the_job_started(
        tmp_path) -> None:
    """The probe's failure ends the job whatever the error budget: the line says so."""
    script = tmp_path / "s.py"
    script.write_text("def run(mini_batch):\n    raise ValueError('bad first batch')\n")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    result = invoke("score", "--entry-script", script, "--input", data, "--output",
                    tmp_path / "y.h5", "--error-threshold", -1, "--batch-format", "numpy")
    assert result.exit_code == 5, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("mpiscore:")]
    assert "scoring the first 2 rows of batch 0 to learn the outputs, before the job " \
           "starts: " in line and "line 2, in run: ValueError: bad first batch" in line, line
