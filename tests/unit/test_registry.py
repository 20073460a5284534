"""io/registry.py: formats by kind, from the suffix or the option; a new kind is one
registration; Parquet dataset directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpiscore.config import InputSpec, JobConfig
from mpiscore.errors import ConfigError, InputError
from mpiscore.io import registry
from mpiscore.io.registry import InputSource, OutputTarget, detect_format, resolve_input
from mpiscore.io.sources import PARQUET_SUFFIXES, dataset_files, expand
from mpiscore.model import TensorSpec
from mpiscore.plan import SourceFile

INPUTS = [TensorSpec("x", "<f4", (None, 4))]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(("path", "expected"), [
    ("x.h5", "hdf5"), ("x.HDF5", "hdf5"), ("x.hdf", "hdf5"), ("x.he5", "hdf5"),
    ("x.parquet", "parquet"), ("x.pq", "parquet"), ("dataset", "parquet")])
def test_format_from_suffix(path: str, expected: str) -> None:
    assert detect_format(path, "auto", "--input") == expected
    assert detect_format(path, "auto", "--output") == expected


def test_directory_is_parquet(tmp_path: Path) -> None:
    directory = tmp_path / "table.v1"
    directory.mkdir()
    assert detect_format(str(directory), "auto", "--input") == "parquet"


def test_declared_format_wins() -> None:
    assert detect_format("x.h5", "parquet", "--input") == "parquet"
    assert detect_format("x.csv", "hdf5", "--input") == "hdf5"


def test_unknown_suffix_raises_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"--output x\.csv: .*'\.csv'; use \.h5 or \.parquet, "
                                          r"or pass --output-format hdf5 or parquet"):
        detect_format("x.csv", "auto", "--output")


def test_unknown_kind_raises() -> None:
    with pytest.raises(ConfigError, match="--input-format 'csv': choose one of hdf5, parquet"):
        detect_format("x.csv", "csv", "--input")


class ToySource:
    """A source kind as a new format module would define it."""

    label, suffixes, directories = "Toy", (".toy",), False

    def resolve(self, config: JobConfig, paths: list[tuple[InputSpec, str]],
                inputs: list[TensorSpec]) -> tuple[str, ...]:
        return tuple(path for _, path in paths)

    def describe(self, resolved: tuple[str, ...]) -> tuple[list[SourceFile], dict, list]:
        return [SourceFile(path, 1) for path in resolved], {}, []

    def open_reader(self, resolved: tuple[str, ...]) -> object:
        return resolved

    def names(self, resolved: tuple[str, ...]) -> list[str]:
        return [f"toy:{path}" for path in resolved]


def test_a_registered_kind_is_chosen_by_its_suffix_and_driven_by_the_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SOURCES, "toy", ToySource())
    path = str(touch(tmp_path / "a.toy"))
    config = JobConfig(Path("m.onnx"), (InputSpec(path),), tmp_path / "o.h5", faults="")
    source = resolve_input(config, INPUTS)
    assert source == InputSource("toy", (path,))
    assert registry.describe(source)[0] == [SourceFile(path, 1)]
    assert registry.input_names(source) == [f"toy:{path}"]
    with pytest.raises(ConfigError, match="cannot tell the format"):
        detect_format("a.toy", "auto", "--output")  # a source, not a sink


def test_mixed_kinds_are_refused(tmp_path: Path) -> None:
    inputs = (InputSpec(str(touch(tmp_path / "a.h5"))), InputSpec(str(touch(tmp_path / "b.pq"))))
    config = JobConfig(Path("m.onnx"), inputs, tmp_path / "o.h5", faults="")
    with pytest.raises(ConfigError, match="--input mixes HDF5 and Parquet files"):
        resolve_input(config, INPUTS)


def test_output_target_of_a_config(tmp_path: Path) -> None:
    config = JobConfig(Path("m.onnx"), (InputSpec("x.h5"),), tmp_path / "o", faults="",
                       overwrite=True)
    assert OutputTarget.of(config) == OutputTarget("parquet", tmp_path / "o", True)


def test_a_directory_is_one_input(tmp_path: Path) -> None:
    touch(tmp_path / "table" / "a.parquet")
    assert expand(InputSpec(str(tmp_path / "table"))) == [str(tmp_path / "table")]


def test_dataset_files_skip_hidden_and_underscore_files(tmp_path: Path) -> None:
    table = tmp_path / "table"
    for name in ("b.parquet", "a.parquet", "_SUCCESS", "_meta.parquet", ".hidden.parquet",
                 "notes.txt", "_staging/c.parquet", ".tmp/d.parquet", "year=1/e.pq",
                 "A.PARQUET"):
        touch(table / name)
    assert dataset_files(str(table), PARQUET_SUFFIXES) == [
        str(table / n) for n in ("A.PARQUET", "a.parquet", "b.parquet", "year=1/e.pq")]


def test_directory_without_parquet_raises(tmp_path: Path) -> None:
    touch(tmp_path / "table" / "_SUCCESS")
    config = JobConfig(Path("m.onnx"), (InputSpec(str(tmp_path / "table")),),
                       tmp_path / "o.h5", faults="")
    with pytest.raises(InputError, match=r"--input .*table: directory holds no \.parquet files"):
        resolve_input(config, INPUTS)


@pytest.mark.parametrize(("output", "module"), [
    ("y.h5", "mpiscore.io.hdf5"), ("y.parquet", "mpiscore.io.parquet")])
def test_warming_an_output_loads_its_writer_module_on_a_thread(output: str, module: str
                                                               ) -> None:
    """A rank imports the writer it finishes the output with while it scores, not after
    its last batch: in a fresh interpreter, nothing before warm() and all of it after."""
    code = ("import sys, threading; from pathlib import Path; "
            "from mpiscore.io.registry import OutputTarget; "
            f"target = OutputTarget({detect_format(output, 'auto', '--output')!r}, "
            f"Path({output!r}), False); "
            f"before = {module!r} in sys.modules; thread = target.warm(); "
            "print(before, thread is not threading.main_thread(), end=' '); thread.join(); "
            f"print({module!r} in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr
