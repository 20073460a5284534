"""Parsing and validating job options (config.py)."""

from __future__ import annotations

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
)
from mpiscore.errors import ConfigError


@pytest.mark.parametrize(("text", "size"), [
    ("4096", BatchSize(rows=4096)), ("64MB", BatchSize(nbytes=64 * 10**6)),
    ("1GiB", BatchSize(nbytes=2**30)), (" 512 kib ", BatchSize(nbytes=512 * 1024))])
def test_batch_sizes(text: str, size: BatchSize) -> None:
    assert parse_batch_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "0", "-5", "12XB", "1.5MB"])
def test_bad_batch_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="--mini-batch-size"):
        parse_batch_size(text)


def test_bytes_become_rows() -> None:
    assert BatchSize(nbytes=1000).rows_for(32) == 31
    assert BatchSize(nbytes=10).rows_for(32) == 1
    assert BatchSize(rows=7).rows_for(32) == 7


def test_input_specs() -> None:
    assert parse_input_spec("data/*.h5:/group/x") == InputSpec("data/*.h5", "/group/x")
    assert parse_input_spec("data/part.parquet") == InputSpec("data/part.parquet")


def test_pairs() -> None:
    assert parse_pairs(("a=/x", "b = c1,c2"), "--map") == (("a", "/x"), ("b", "c1,c2"))
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_pairs(("a",), "--map")
    with pytest.raises(ConfigError, match="a given more than once"):
        parse_pairs(("a=1", "a=2"), "--rename")


def test_formats(tmp_path: Path) -> None:
    assert detect_format("x.h5", "auto", "--output") == "hdf5"
    assert detect_format("x.parquet", "auto", "--output") == "parquet"
    assert detect_format(str(tmp_path), "auto", "--input") == "parquet"
    assert detect_format("x.csv", "hdf5", "--input") == "hdf5"
    with pytest.raises(ConfigError, match=r"x\.csv"):
        detect_format("x.csv", "auto", "--input")


def job(**changes) -> JobConfig:
    options = {"model": Path("m.onnx"), "inputs": (InputSpec("x.h5"),),
               "output": Path("o/y.h5"), **changes}
    return JobConfig(**options)


def test_defaults() -> None:
    config = job()
    assert config.resolved_run_dir == Path("o/y.h5.run")
    assert config.window_for(1) == 2 and job(window=5).window_for(3) == 5
    assert config.resolved_output_format == "hdf5"


@pytest.mark.parametrize(("changes", "message"), [
    ({"inputs": ()}, "no --input"), ({"procs_per_rank": 0}, "--procs-per-rank"),
    ({"columns": ("a",), "mapping": (("x", "a"),)}, "exclude each other"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite"),
    ({"batch_timeout": 0.0}, "--batch-timeout"), ({"error_threshold": -2}, "--error-threshold")])
def test_invalid_jobs(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        job(**changes)


def test_session_validation() -> None:
    with pytest.raises(ConfigError, match="--graph-optimization"):
        SessionConfig(graph_optimization="max")
    with pytest.raises(ConfigError, match="--intra-op-threads"):
        SessionConfig(intra_op_threads=0)


def test_layout_shares_the_rank_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert job().layout(ranks_on_node=4) == (1, 4)  # unbound: 16 cores / 4 ranks
    assert job(procs_per_rank=None).layout(4) == (4, 1)
    assert job(procs_per_rank=None, session=SessionConfig(intra_op_threads=2)).layout(2) == (4, 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert job(procs_per_rank=2).layout(ranks_on_node=8) == (2, 3)  # bound by srun: 6 cores
