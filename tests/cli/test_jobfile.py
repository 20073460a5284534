"""Job files: ``mpiscore score --config job.toml``, CLI overrides, RUN_DIR/config.toml."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mpiscore.cli import main, score
from mpiscore.config import OPTION_KEYS, config_from_options, options_of
from mpiscore.jobfile import dump_toml, option_kinds, read_job_file
from tests import builders

ROWS = 50


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def own_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("mpiscore:")]


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A job folder: model, data and a job file naming them relative to itself."""
    folder = tmp_path / "job"
    folder.mkdir()
    builders.mlp(folder / "m.onnx")
    builders.write_h5(folder / "x.h5", features=builders.features(ROWS))
    (folder / "job.toml").write_text(
        'model = "m.onnx"\ninput = ["x.h5:/features"]\noutput = "out/y.h5"\n'
        "mini_batch_size = 8\nmax_retries = 1\nintra_op_threads = 1\n"
        'providers = ["CPUExecutionProvider"]\n')
    (folder / "out").mkdir()
    return folder


def test_job_file_with_an_override_and_the_effective_config(job_dir, monkeypatch,
                                                             tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the file are the file's, not the cwd's
    result = invoke("score", "--config", "job/job.toml", "--mini-batch-size", 16)
    assert result.exit_code == 0, result.output
    out, run_dir = job_dir / "out" / "y.h5", job_dir / "out" / "y.h5.run"
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(
            handle["label"][()],
            builders.reference(job_dir / "m.onnx", features=builders.features(ROWS))["label"])
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["batch_rows"] == 16  # the command line won
    stored = tomllib.loads((run_dir / "config.toml").read_text())
    assert stored["mini_batch_size"] == 16 and stored["max_retries"] == 1
    assert stored["model"] == str(job_dir / "m.onnx")
    assert stored["input"] == [f"{job_dir / 'x.h5'}:/features"]
    assert stored["run_dir"] == str(run_dir)
    assert "overwrite" not in stored and "resume" not in stored
    again = invoke("score", "--config", run_dir / "config.toml", "--resume")
    assert again.exit_code == 0 and "already complete" in again.output, again.output


def test_cli_values_replace_a_list_from_the_file(job_dir, monkeypatch) -> None:
    monkeypatch.chdir(job_dir)
    result = invoke("score", "--config", "job.toml", "--input", "absent.h5")
    assert result.exit_code == 3 and "absent.h5" in own_lines(result.output)[0], result.output


@pytest.mark.parametrize(("text", "message"), [
    ("model = \n", "job.toml: not a TOML file: "),
    ('mini_batch = 4096\n', "job.toml: unknown key 'mini_batch' (did you mean "
                            "'mini_batch_size'?)"),
    ("max_retries = \"three\"\n", 'job.toml: max_retries = "three": expected an integer'),
    ("overwrite = 1\n", "job.toml: overwrite = 1: expected true or false"),
    ('input = [1, 2]\n', "job.toml: input = [1, 2]: expected a list of strings"),
    ('cast = "lossy"\n', 'job.toml: cast = "lossy": choose one of safe, same_kind, unsafe'),
    ("max_retries = {a = 1}\n", "job.toml: max_retries = a table: expected an integer"),
    ("mini_batch_size = 2024-01-01\n",
     "job.toml: mini_batch_size = a TOML date: expected a string or a number"),
    ("map = {features = 1}\n",
     "job.toml: map = a table: expected a list of strings or a table of strings"),
    ("columns = [{a = 1}]\n", "job.toml: columns = a TOML list: expected a string"),
    ("[score]\nmodel = \"m.onnx\"\n", "job.toml: unknown key 'score'"),
])
def test_bad_job_files_are_one_line_exit_2(tmp_path, text, message) -> None:
    path = tmp_path / "job.toml"
    path.write_text(text)
    result = invoke("score", "--config", path, "--model", "m.onnx")
    assert result.exit_code == 2, result.output
    [line] = own_lines(result.output)
    assert line.startswith("mpiscore: ConfigError: ") and message in line, line
    assert "Traceback" not in result.output


def test_a_table_gives_map_and_rename_their_pairs(job_dir, monkeypatch) -> None:
    monkeypatch.chdir(job_dir)
    with (job_dir / "job.toml").open("a") as handle:
        handle.write('map = {features = "/features"}\nrename = {label = "predicted"}\n')
    result = invoke("score", "--config", "job.toml")
    assert result.exit_code == 0, result.output
    with h5py.File(job_dir / "out" / "y.h5") as handle:
        assert "predicted" in handle and "label" not in handle
    stored = tomllib.loads((job_dir / "out" / "y.h5.run" / "config.toml").read_text())
    assert stored["map"] == ["features=/features"]


def test_missing_job_file(tmp_path) -> None:
    result = invoke("score", "--config", tmp_path / "absent.toml")
    assert result.exit_code == 2
    [line] = own_lines(result.output)
    assert "absent.toml: cannot read the job file" in line


def test_job_file_keys_are_the_score_options() -> None:
    assert set(option_kinds(score.params)) == set(OPTION_KEYS)


def test_options_round_trip_through_toml() -> None:
    options = {"model": "m.onnx", "input": ["a b/*.h5:/x", 'q"\\uote\x7f.h5'],
               "output": "ü/y.parquet", "map": ["a=f0,f1"], "columns": None,
               "keep_columns": "id", "mini_batch_size": "64MiB", "intra_op_threads": "auto",
               "procs_per_rank": 2, "batch_timeout": 2.5, "spin": True, "window": None}
    config = config_from_options(options)
    written = {k: v for k, v in options_of(config).items() if v is not None}
    loaded = tomllib.loads(dump_toml(written, "a header\nof two lines"))
    assert loaded == written
    assert config_from_options(loaded) == config
    assert tomllib.loads(dump_toml({"x": math.inf}))["x"] == math.inf


def test_the_example_job_file_is_valid() -> None:
    example = Path(__file__).parents[2] / "examples" / "job.toml"
    values = read_job_file(example, option_kinds(score.params))
    assert values["model"] == str(example.parent / "mlp_classifier.onnx")
    assert Path(values["model"]).exists()
