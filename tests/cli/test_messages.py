"""What the command says: help, click's own errors once per job, the first lines, the last."""

from __future__ import annotations

import textwrap
from pathlib import Path

import click
import numpy as np
from click.testing import CliRunner

from mpiscore.cli import main, score
from tests import builders


def invoke(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_every_option_has_help_and_default() -> None:
    for param in score.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        assert param.help, f"{param.opts[0]} has no help text"
        assert param.show_default or param.required or "[default:" in param.help, \
            f"{param.opts[0]} does not say its default"


def test_help_shows_examples_with_their_line_breaks() -> None:
    result = invoke("score", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert "  mpiexec -n 64 mpiscore score --model model.onnx \\\n" in result.output
    assert "--progress-seconds FLOAT        Seconds between" in result.output


def test_usage_error_printed_by_launcher_rank_0_only() -> None:
    args = ("score", "--modle", "m.onnx", "--input", "x.h5", "--output", "y.h5")
    for variable in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        quiet = invoke(*args, env={variable: "1"})
        assert quiet.exit_code == 2 and quiet.output == "", variable
    loud = invoke(*args, env={"PMI_RANK": "0"})
    assert loud.exit_code == 2 and "No such option '--modle'" in loud.output
    assert invoke("score", "--help", env={"PMI_RANK": "3"}).output == ""


def test_first_lines_and_last_line_of_a_resumed_job(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(100))
    out = tmp_path / "y.h5"
    args = ("score", "--model", model, "--input", path, "--output", out,
            "--mini-batch-size", 10, "--max-retries", 0, "--intra-op-threads", 1)
    failed = invoke(*args, env={"MPISCORE_FAULTS": "raise-always:5"})
    assert failed.exit_code == 5, failed.output
    lines = failed.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "starting 1 rank x 1 scoring process" in line)
    assert "INFO loading model" in lines[first + 1] and "(1.1 KiB)" in lines[first + 1]
    assert f"checking the input {path}" in lines[first + 1]
    assert any(f"planned 10 batches of <= 10 rows (100 rows, 1 file); created {out}.partial"
               in line for line in lines)
    assert any("scoring: 1 scoring process on this rank, 1 intra-op thread each" in line
               for line in lines)
    [last] = [line for line in lines if "INFO failed:" in line]
    assert f"; {out}.partial holds " in last and "10 rows failed" in last
    assert "10 rows failed for good (in 1 batch), more than --error-threshold 0" in failed.output
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    [last] = [line for line in resumed.stderr.splitlines() if "INFO complete:" in line]
    assert "scored by this run" in last and "from an earlier run" in last, last
    assert f"; {out} holds 10 of 10 batches, 100 of 100 rows (" in last, last
    assert "reopened" in resumed.stderr


def test_small_batches_warn_once(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(2000))
    result = invoke("score", "--model", model, "--input", path, "--output", tmp_path / "y.h5",
                    "--mini-batch-size", 1)
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "--mini-batch-size 1: batches of 1 row (32 bytes of input) make 2,000 batches" \
        in warning
    assert "--mini-batch-size 4MiB" in warning


def test_an_output_renamed_into_a_group_is_refused_before_anything_is_made(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    result = invoke("score", "--model", model, "--input", path, "--output", tmp_path / "y.h5",
                    "--rename", "label=foo/bar")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("mpiscore: ConfigError: --rename label=foo/bar: an output's "
                                     "name holds no '/', is not '.' or '..' and does not start "
                                     "with _mpiscore (mpiscore's own); choose another")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "x.h5"]


def test_stray_words_and_dry_run_options_alone_are_one_line(tmp_path) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    path = builders.write_h5(tmp_path / "x.h5", features=builders.features(20))
    common = ("score", "--model", model, "--input", path, "--output", tmp_path / "y.h5")
    expanded = invoke(*common, "--rename", "label=l", "f1", "f2", "f3", "f4")  # --rename f*
    assert expanded.exit_code == 2 and expanded.output.strip() == (
        "mpiscore: ConfigError: arguments after --: for --entry-script jobs only (here f1 f2 "
        "f3 ...: if the shell expanded an unquoted glob, quote it: --columns 'f*')")
    for alone in (("--json",), ("--ranks", 4)):
        result = invoke(*common, *alone)
        assert result.exit_code == 2 and result.output.strip() == (
            "mpiscore: ConfigError: --ranks and --json are --dry-run's: add --dry-run, or "
            "leave them out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "x.h5"]


def test_readme_reads_hdf5_output_into_pandas(tmp_path, monkeypatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    snippet = readme.split("pd.read_hdf", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.features(30)
    path = builders.write_h5(tmp_path / "x.h5", features=data)
    monkeypatch.chdir(tmp_path)
    result = invoke("score", "--model", model, "--input", path, "--output", "scores.h5")
    assert result.exit_code == 0, result.output
    names: dict = {}
    exec(textwrap.dedent(snippet), names)  # the README's own code
    want = builders.reference(model, features=data)
    np.testing.assert_array_equal(names["df"]["label"], want["label"])
    np.testing.assert_array_equal(np.stack(names["df"]["logits"]), want["logits"])
    assert list(names["wide"].columns) == ["label", "row_status", "logits_0", "logits_1",
                                           "logits_2"]
