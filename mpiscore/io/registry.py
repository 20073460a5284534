"""Pick the reader and writer for a job's formats; the only place that knows both."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import JobConfig, detect_format, split_names
from ..errors import ConfigError, ModelError, OutputError
from ..plan import Plan, SourceFile
from . import hdf5
from .fields import Field, ParquetSelection, Reader, Writer
from .sources import expand

if TYPE_CHECKING:
    from ..model import TensorSpec


def _parquet() -> ModuleType:
    """The Parquet module, imported only by jobs that use Parquet (pyarrow takes ~0.1 s)."""
    from . import parquet

    return parquet


@dataclass(frozen=True)
class Hdf5Input:
    sources: tuple[hdf5.Hdf5Source, ...]


@dataclass(frozen=True)
class ParquetInput:
    paths: tuple[str, ...]
    selection: ParquetSelection


InputSource = Hdf5Input | ParquetInput


def resolve_input(config: JobConfig, inputs: list[TensorSpec]) -> InputSource:
    """Expand the ``--input`` globs and decide which data feeds each model input.

    ``inputs`` are the model's inputs: their names pick a default dataset or
    column, their shapes say what a default Parquet column must hold.
    """
    input_names = [spec.name for spec in inputs]
    specs = [(spec, path) for spec in config.inputs for path in expand(spec)]
    formats = {detect_format(path, config.input_format, "--input") for _, path in specs}
    if len(formats) > 1:
        raise ConfigError("--input mixes HDF5 and Parquet files; score them in separate jobs")
    if len(input_names) > 1 and not config.mapping:
        raise ModelError(f"{config.model}: the model has inputs {', '.join(input_names)}; "
                         "say where each comes from with --map NAME=SOURCE")
    if formats == {"hdf5"}:
        if config.columns or config.keep_columns:
            raise ConfigError("--columns and --keep-columns apply to Parquet input only")
        return Hdf5Input(tuple(hdf5.Hdf5Source(path, _datasets(config, spec.dataset, path,
                                                               input_names))
                               for spec, path in specs))
    paths = tuple(path for _, path in specs)
    return ParquetInput(paths, _selection(config, paths[0], inputs))


def _datasets(config: JobConfig, dataset: str | None, path: str, names: list[str]
              ) -> tuple[tuple[str, str], ...]:
    if config.mapping:
        return tuple((name, "/" + target.lstrip("/")) for name, target in config.mapping)
    return ((names[0], dataset or hdf5.default_dataset(path, names[0])),)


def _selection(config: JobConfig, first: str, inputs: list[TensorSpec]) -> ParquetSelection:
    """--map, else --columns, else the one column that cannot be a wrong guess (never
    "every numeric column": that scored id and label columns as features)."""
    parquet = _parquet()
    if config.mapping:
        features = tuple((name, split_names(cols)) for name, cols in config.mapping)
    else:
        schema = parquet.read_schema(first)
        spec = inputs[0]
        columns = parquet.match_columns(first, schema, config.columns) if config.columns \
            else parquet.default_columns(first, schema, spec.name, spec.shape[1:],
                                         config.keep_columns)
        features = ((spec.name, columns),)
    return ParquetSelection(features, config.keep_columns)


def describe(source: InputSource) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
    """Files, model-input fields and carried fields of the input (rank 0)."""
    if isinstance(source, Hdf5Input):
        files, fields = hdf5.describe(source.sources)
        return files, fields, []
    files, fields, kept = _parquet().describe(source.paths, source.selection)
    return files, fields, list(kept.values())


def open_reader(source: InputSource) -> Reader:
    if isinstance(source, Hdf5Input):
        return hdf5.Hdf5Reader(source.sources)
    return _parquet().ParquetReader(source.paths, source.selection)


def input_names(source: InputSource) -> list[str]:
    """The input files and datasets or columns, for provenance."""
    if isinstance(source, Hdf5Input):
        return [f"{s.path}:{ds}" for s in source.sources for _, ds in s.datasets]
    return list(source.paths)


@dataclass(frozen=True)
class OutputTarget:
    """Where output goes: format, the final path, and the path used until complete."""

    format: str
    final: Path
    overwrite: bool

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + ".partial")

    def check(self, outputs: list[Field], kept: list[Field], resume: bool,
              inputs: list[str]) -> None:
        """Refuse clashing names, unwritable places, and any output already there unless
        it is to be resumed or replaced, and may be: ``--overwrite`` replaces only
        what mpiscore wrote, never one of the job's ``inputs``."""
        clashes = sorted({f.name for f in outputs} & {f.name for f in kept})
        if clashes:
            raise ConfigError(f"--keep-columns {','.join(clashes)}: also an output name; "
                              "rename the model output with --rename OUTPUT=NEW_NAME")
        for path in (self.final, self.partial):
            _refuse_an_input(path, inputs)
        if resume:
            if self.final.exists():
                raise ConfigError(f"--resume: {self.final} is complete; nothing to resume")
            if not self.partial.exists():
                raise ConfigError(f"--resume: {self.partial} not found; nothing to resume")
            return
        self._check_replaceable()
        parent = self.final.parent if str(self.final.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{self.final}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{self.final}: directory {parent} is not writable")
        if self.format == "hdf5":
            bad = [f.name for f in kept if np.dtype(f.dtype).kind not in "biuf"]
            if bad:
                raise ConfigError(f"--keep-columns {','.join(bad)}: not numeric, so they "
                                  "cannot go to HDF5 output; write Parquet output instead")

    def _check_replaceable(self) -> None:
        if self.final.exists() and not self.overwrite:
            raise OutputError(f"{self.final}: output exists; pass --overwrite (overwrite=True) to "
                              "replace it")
        if self.partial.exists() and not self.overwrite:
            raise OutputError(
                f"{self.partial}: an interrupted run's partial output is here; rerun with "
                "--resume (resume=True) to finish it, or with --overwrite (overwrite=True) to "
                "discard it and start over")
        for path in (self.final, self.partial):
            if (path.exists() or path.is_symlink()) and not _ours(path):
                kind = "a directory" if path.is_dir() else "a file"
                raise OutputError(
                    f"{path}: {kind} that mpiscore did not write (not an mpiscore output), "
                    "so --overwrite will not delete it; choose another --output or move it "
                    "away yourself")

    def create(self, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        """Create the (partial) output on rank 0; HDF5 returns dataset byte offsets."""
        for stale in (self.final, self.partial):
            if stale.exists() or stale.is_symlink():
                remove(stale)
        if self.format == "hdf5":
            plan_rows = np.array([[b.batch_id, b.file_index, b.start, b.stop]
                                  for b in plan.batches], dtype=np.int64)
            return hdf5.create(self.partial, fields + kept, plan.total_rows, attrs, plan_rows)
        _parquet().create(self.partial)
        return {}

    def reopen(self, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        """Offsets into the partial output of an interrupted run (for --resume)."""
        return hdf5.offsets(self.partial, fields + kept) if self.format == "hdf5" else {}

    def written(self, journal: set[int]) -> set[int]:
        """Of the batches the journal lists, those whose output is still there to keep."""
        if self.format == "hdf5":
            return journal
        parquet = _parquet()
        parquet.discard_staged(self.partial)  # half-written by processes of the cut-short run
        return journal & parquet.written_batches(self.partial)

    def open_writer(self, fields: list[Field], kept: list[Field], plan: Plan,
                    offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        """A writer for a scoring process (write, close) or a rank (finish)."""
        if self.format == "hdf5":
            return hdf5.Hdf5Writer(self.partial, self.final, fields + kept, offsets)
        return _parquet().ParquetWriter(self.partial, self.final, fields, kept, plan.batches,
                                        attrs)


def _refuse_an_input(path: Path, inputs: list[str]) -> None:
    """An output path that is, or holds, one of the job's input files is never ours."""
    if not path.exists():
        return
    for name in inputs:
        source = Path(name)
        if source.exists() and (os.path.samefile(source, path) or
                                (path.is_dir() and path.resolve() in source.resolve().parents)):
            raise OutputError(f"{path}: is (or holds) the input {name} of this job; choose "
                              "another --output")


def _ours(path: Path) -> bool:
    """Whether ``path`` is an output or partial output that mpiscore wrote."""
    if path.is_symlink():
        return False
    return hdf5.owned(path) if path.is_file() else _parquet().owned(path)


def remove(path: Path) -> None:
    """Delete an output file or directory (for --overwrite and stale partial output)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
