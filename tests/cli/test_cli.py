"""The command line in-process with click's CliRunner: messages and exit codes."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
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
