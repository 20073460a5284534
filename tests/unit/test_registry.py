"""io/registry.py: formats by kind, from the suffix or the option; a new kind is one
registration; Parquet dataset directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpiscore.config import BatchSize, InputSpec, JobConfig
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
            f"before = {module!r} in sys.modules; thread = target.warm(0); "
            "print(before, thread is not threading.main_thread(), end=' '); thread.join(); "
            f"print({module!r} in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr


@pytest.mark.parametrize("kind", ["hdf5", "parquet"])
def test_a_planned_input_holds_the_file_table_s_paths_and_sends_each_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Many HDF5 files are described in forked processes, so the file table's paths come
    back as new strings; Parquet's come from the input as resolved. Bound to the plan
    (as Job does), the input names its files by the table's own path objects, also after
    the pickle every rank gets, so a job carries each path once (and one list of
    datasets for all HDF5 files); it reads as before; a plan of other files is refused."""
    import pickle

    import numpy as np

    from mpiscore.io import hdf5
    from tests import builders

    monkeypatch.setattr(hdf5, "PROCESSES_FROM", 8)
    monkeypatch.setattr(hdf5, "FILES_PER_TASK", 4)
    data = np.arange(40 * 3 * 4, dtype="<f4").reshape(-1, 4)
    long = tmp_path / ("a-directory-name-that-makes-each-path-long-" * 2)
    long.mkdir()
    for i in range(40):
        part = data[i * 3:(i + 1) * 3]
        if kind == "hdf5":
            builders.write_h5(long / f"part-{i:03d}.h5", x=part)
        else:
            builders.write_parquet(long / f"part-{i:03d}.parquet", part)
    pattern = str(long / ("*.h5" if kind == "hdf5" else "*.parquet"))
    config = JobConfig(model=tmp_path / "m.onnx", inputs=(InputSpec(pattern),),
                       output=tmp_path / "y.h5", batch_size=BatchSize(rows=5),
                       columns=() if kind == "hdf5" else ("f*",))
    source = resolve_input(config, INPUTS)
    files, fields, _ = registry.describe(source)
    plan = registry.plan_batches(config, source, files, fields["x"].row_nbytes)
    bound = source.bound(plan.files)
    assert bound.bound(plan.files) is bound
    sent = pickle.dumps((bound, plan.shared()))
    saved = len(pickle.dumps((source, plan.shared()))) - len(sent)
    if kind == "hdf5":  # 40 long paths, and 39 lists of datasets, no longer sent twice
        assert saved > 40 * len(str(long))
    else:  # described in this process: the table's paths were the input's already
        assert bound is source
    received, shared = pickle.loads(sent)
    paths = [s.path for s in received.resolved] if kind == "hdf5" else received.resolved.paths
    assert all(path is file.path for path, file in zip(paths, shared.files, strict=True))
    reader = registry.open_reader(received)
    read = np.concatenate([reader.read(batch)[0]["x"].copy() for batch in plan.batches])
    np.testing.assert_array_equal(read, data)
    with pytest.raises(ValueError, match="its own files only"):
        source.bound(plan.files[1:])


@pytest.mark.parametrize(("output", "others_finish"), [
    ("y.h5", False), ("y.parquet", False), ("append_row", True), ("summary_only", True)])
def test_only_kinds_whose_finish_every_rank_shares_have_other_ranks_open_a_writer(
        tmp_path: Path, output: str, others_finish: bool) -> None:
    kind = output if output in ("append_row", "summary_only") else \
        detect_format(output, "auto", "--output")
    target = OutputTarget(kind, tmp_path / output, False)
    assert target.finisher(0)
    assert target.finisher(1) is others_finish
    assert (target.warm(1) is None) is not others_finish
