"""The command line in-process with click's CliRunner: messages and exit codes."""

from __future__ import annotations

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
