"""config.py: parsing options and validating a job's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpiscore.config import (
    BatchSize,
    InputSpec,
    JobConfig,
    SessionConfig,
    parse_batch_size,
    parse_input_spec,
    parse_pairs,
    split_names,
)
from mpiscore.errors import ConfigError


def job(**changes: object) -> JobConfig:
    values: dict[str, object] = {"model": Path("m.onnx"), "inputs": (InputSpec("x.h5"),),
                                 "output": Path("out/scores.h5"), "faults": ""}
    values.update(changes)
    return JobConfig(**values)  # type: ignore[arg-type]


# ---- --mini-batch-size ---------------------------------------------------------------------


def test_plain_number_is_rows() -> None:
    size = parse_batch_size("4096")
    assert (size.rows, size.nbytes) == (4096, None)


@pytest.mark.parametrize(("text", "nbytes"), [
    ("64MB", 64_000_000), ("1GiB", 1024**3), ("512kib", 512 * 1024), ("3 GB", 3 * 10**9),
    ("100B", 100), (" 2MiB ", 2 * 1024 * 1024)])
def test_suffix_is_bytes(text: str, nbytes: int) -> None:
    size = parse_batch_size(text)
    assert (size.rows, size.nbytes) == (None, nbytes)


@pytest.mark.parametrize("text", ["", "MB", "abc", "0", "0MB", "-1", "1.5GB", "10XB", "64M B",
                                  "1e6"])
def test_bad_batch_size_raises(text: str) -> None:
    with pytest.raises(ConfigError, match="--mini-batch-size"):
        parse_batch_size(text)


def test_rows_derived_from_bytes() -> None:
    assert BatchSize(nbytes=64).rows_for(8) == 8
    assert BatchSize(nbytes=70).rows_for(8) == 8  # rounded down
    assert BatchSize(nbytes=4).rows_for(8) == 1  # never zero
    assert BatchSize(nbytes=4).rows_for(0) == 4
    assert BatchSize(rows=5).rows_for(1000) == 5


# ---- --input -------------------------------------------------------------------------------


def test_glob_with_dataset() -> None:
    assert parse_input_spec("a/*.h5:/g/x") == InputSpec("a/*.h5", "/g/x")


def test_plain_path_has_no_dataset() -> None:
    assert parse_input_spec("data/x.h5") == InputSpec("data/x.h5", None)


def test_parquet_directory() -> None:
    assert parse_input_spec("data/table") == InputSpec("data/table", None)
    assert parse_input_spec("data/table/") == InputSpec("data/table/", None)


def test_top_level_dataset() -> None:
    assert parse_input_spec("x.h5:/features") == InputSpec("x.h5", "/features")


# ---- --map / --rename, column lists --------------------------------------------------------


def test_pairs_parsed_and_stripped() -> None:
    assert parse_pairs(("a=/x", " b = c,d "), "--map") == (("a", "/x"), ("b", "c,d"))
    assert parse_pairs((), "--map") == ()


@pytest.mark.parametrize("value", ["a", "=b", "a=", ""])
def test_bad_pair_raises(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--rename .*expected NAME=VALUE"):
        parse_pairs((value,), "--rename")


def test_duplicate_pair_raises() -> None:
    with pytest.raises(ConfigError, match="--map: a given more than once"):
        parse_pairs(("a=x", "b=y", "a=z"), "--map")
    with pytest.raises(ConfigError, match="given more than once"):
        parse_pairs(("a=x", " a =y"), "--map")  # the same name once stripped


def test_split_names() -> None:
    assert split_names("id, x ,,y") == ("id", "x", "y")
    assert split_names(None) == () and split_names("") == ()


# ---- JobConfig / SessionConfig -------------------------------------------------------------


def test_no_inputs_raises() -> None:
    with pytest.raises(ConfigError, match="no --input"):
        job(inputs=())


def test_columns_and_mapping_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="--columns and --map"):
        job(columns=("f*",), mapping=(("x", "f0,f1"),))
    assert job(columns=("f*",)).columns == ("f*",)
    assert job(mapping=(("x", "f0"),)).mapping == (("x", "f0"),)


@pytest.mark.parametrize(("changes", "message"), [
    ({"procs_per_rank": 0}, "--procs-per-rank"), ({"window": 0}, "--window"),
    ({"max_retries": -1}, "--max-retries"), ({"error_threshold": -2}, "--error-threshold"),
    ({"batch_timeout": 0.0}, "--batch-timeout"), ({"progress_timeout": -1.0}, "--progress-timeout"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite"),
    ({"progress_seconds": 0.0}, "--progress-seconds must be positive"),
    ({"stop_grace": -1.0}, "--stop-grace >= 0"),
    ({"allowed_failed_percent": -1.0}, "--allowed-failed-percent must be between 0 and 100"),
    ({"allowed_failed_percent": 150.0}, "--allowed-failed-percent"),
    ({"rename": (("variable", "foo/bar"),)}, r"--rename variable=foo/bar: an output's name"),
    ({"rename": (("variable", "."),)}, "--rename variable=.: "),
    ({"rename": (("variable", "_mpiscore"),)}, "does not start with _mpiscore"),
    ({"rename": (("variable", "_mpiscore_x"),)}, "--rename variable=_mpiscore_x")])
def test_invalid_job_options_raise(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job(**changes)


def test_bounds_and_names_that_are_fine() -> None:
    job(allowed_failed_percent=0.0, stop_grace=0.0, progress_seconds=0.5,
        rename=(("variable", "pred.v2"), ("label", "mpiscore_label")))


def test_run_dir_defaults_beside_the_output() -> None:
    assert job().resolved_run_dir == Path("out/scores.h5.run")
    assert job(output=Path("scores")).resolved_run_dir == Path("scores.run")
    assert job(run_dir=Path("/tmp/r")).resolved_run_dir == Path("/tmp/r")


def test_faults_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPISCORE_FAULTS", "raise:3")
    config = JobConfig(Path("m.onnx"), (InputSpec("x.h5"),), Path("o.h5"))
    assert config.faults == "raise:3"


@pytest.mark.parametrize(("changes", "message"), [
    ({"graph_optimization": "max"}, "--graph-optimization"),
    ({"intra_op_threads": 0}, "--intra-op-threads"),
    ({"inter_op_threads": 0}, "--inter-op-threads"), ({"providers": ()}, "--providers")])
def test_invalid_session_options_raise(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SessionConfig(**changes)  # type: ignore[arg-type]


def test_session_defaults() -> None:
    session = SessionConfig()
    assert session.providers == ("CPUExecutionProvider",) and session.cast == "safe"
    assert session.intra_op_threads is None and not session.allow_spinning


@pytest.mark.parametrize("value", [" =x", "x= ", " = "])
def test_pairs_with_blank_sides_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_pairs((value,), "--map")
