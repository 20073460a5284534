"""config.py: parsing options and validating a job's configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpiscore.config import (
    BatchSize,
    InputSpec,
    JobConfig,
    SessionConfig,
    detect_format,
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


# ---- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("x.h5", "hdf5"), ("x.HDF5", "hdf5"), ("x.hdf", "hdf5"), ("x.he5", "hdf5"),
    ("x.parquet", "parquet"), ("x.pq", "parquet"), ("dataset", "parquet")])
def test_format_from_suffix(path: str, expected: str) -> None:
    assert detect_format(path, "auto", "--input") == expected


def test_directory_is_parquet(tmp_path: Path) -> None:
    directory = tmp_path / "table.v1"
    directory.mkdir()
    assert detect_format(str(directory), "auto", "--input") == "parquet"


def test_declared_format_wins() -> None:
    assert detect_format("x.h5", "parquet", "--input") == "parquet"
    assert detect_format("x.csv", "hdf5", "--input") == "hdf5"


def test_unknown_suffix_raises_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"--output x\.csv: .*'\.csv'"):
        detect_format("x.csv", "auto", "--output")


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
    ({"batch_timeout": 0.0}, "--batch-timeout"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite")])
def test_invalid_job_options_raise(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job(**changes)


def test_run_dir_defaults_beside_the_output() -> None:
    assert job().resolved_run_dir == Path("out/scores.h5.run")
    assert job(output=Path("scores")).resolved_run_dir == Path("scores.run")
    assert job(run_dir=Path("/tmp/r")).resolved_run_dir == Path("/tmp/r")


def test_window_defaults_to_six_per_process_plus_one() -> None:
    """2 scoring, up to 4 written and waiting for their group's flush, per process."""
    assert job().window_for(1) == 7
    assert job().window_for(4) == 25
    assert job(window=2).window_for(4) == 2


def cores(monkeypatch: pytest.MonkeyPatch, usable: int, machine: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(usable)))
    monkeypatch.setattr(os, "cpu_count", lambda: machine)


def test_unbound_ranks_share_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 8, 8)
    assert job(procs_per_rank=None).layout(2) == (4, 1)  # 4 cores each: 4 procs x 1 thread
    assert job(procs_per_rank=1).layout(2) == (1, 4)
    assert job(procs_per_rank=2).layout(1) == (2, 4)
    auto = job(procs_per_rank=None, session=SessionConfig(intra_op_threads=2))
    assert auto.layout(2) == (2, 2)


def test_bound_rank_uses_its_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 3, 16)  # the launcher bound this rank to 3 of 16 cores
    assert job(procs_per_rank=None).layout(4) == (3, 1)
    assert job(procs_per_rank=1).layout(4) == (1, 3)


def test_layout_never_gives_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    cores(monkeypatch, 2, 2)
    assert job(procs_per_rank=None).layout(8) == (1, 1)
    assert job(procs_per_rank=4).layout(1) == (4, 1)


def test_output_format_from_output_path() -> None:
    assert job().resolved_output_format == "hdf5"
    assert job(output=Path("o.parquet")).resolved_output_format == "parquet"
    assert job(output=Path("o.h5"), output_format="parquet").resolved_output_format == "parquet"


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
