"""The built-in kinds of input and output, HDF5 and Parquet, as the registry drives them.

Each class adapts its format module (hdf5.py, parquet.py) to the registry's
SourceKind or SinkKind; registry.py registers them. Each format module is
imported only where it is used (h5py and numpy take ~60 ms, pyarrow ~0.1 s):
in the scoring processes, and on the ranks only to finish the output, so a
rank's start-up imports neither (tests/cli/test_cli.py checks it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..config import RESERVED_PREFIX, BatchSize, InputSpec, JobConfig, split_names
from ..errors import ConfigError, InputError
from ..plan import BatchTable, Plan, SourceFile, make_plan
from .fields import Field, ParquetSelection, Reader, Writer
from .sources import HDF5_SUFFIXES, PARQUET_SUFFIXES, Hdf5Source, dataset_files

if TYPE_CHECKING:
    from ..model import TensorSpec

Resolved = list[tuple[InputSpec, str]]  # each path with the --input that named it
SCRIPT_ARRAY = "data"  # an entry script's HDF5 dataset, when --map names none


def _parquet() -> ModuleType:
    from . import parquet

    return parquet


def _hdf5() -> ModuleType:
    from . import hdf5

    return hdf5


class Hdf5SourceKind:
    """HDF5 input: one or more datasets of each file, by --map or the model input's name."""

    label: str = "HDF5"
    suffixes: tuple[str, ...] = HDF5_SUFFIXES
    directories: bool = False

    def resolve(self, config: JobConfig, paths: Resolved, inputs: list[TensorSpec]
                ) -> tuple[Hdf5Source, ...]:
        if config.columns or config.keep_columns:
            raise ConfigError("--columns and --keep-columns apply to Parquet input only")
        names = [spec.name for spec in inputs] or [SCRIPT_ARRAY]
        unnamed = next((path for spec, path in paths if spec.dataset is None), None)
        chosen = _datasets(config, None, unnamed, names) if unnamed is not None else ()
        return tuple(Hdf5Source(path, _datasets(config, spec.dataset, path, names)
                                if spec.dataset else chosen)
                     for spec, path in paths)

    def describe(self, sources: tuple[Hdf5Source, ...]
                 ) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
        files, fields = _hdf5().describe(sources)
        return files, fields, []

    def plan(self, sources: tuple[Hdf5Source, ...], files: list[SourceFile],
             batch_size: BatchSize, row_nbytes: int) -> Plan:
        return make_plan(files, batch_size.rows_for(row_nbytes))

    def bound(self, sources: tuple[Hdf5Source, ...], files: tuple[SourceFile, ...]
              ) -> tuple[Hdf5Source, ...]:
        """Each file's path from the file table, and one tuple for equal dataset lists
        (each file's own, as resolved: 10,000 files would carry 10,000 copies)."""
        paths = _table_paths([s.path for s in sources], files)
        if paths is None:
            return sources
        datasets: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        return tuple(Hdf5Source(path, datasets.setdefault(s.datasets, s.datasets))
                     for s, path in zip(sources, paths, strict=True))

    def open_reader(self, sources: tuple[Hdf5Source, ...]) -> Reader:
        return _hdf5().Hdf5Reader(sources)

    def names(self, sources: tuple[Hdf5Source, ...]) -> list[str]:
        return [f"{s.path}:{ds}" for s in sources for _, ds in s.datasets]

    def feeds(self, sources: tuple[Hdf5Source, ...]) -> list[Any]:
        """``[["features=/x", files], ...]``: each run of files reading the same
        datasets (one run, usually), so that any other assignment differs."""
        runs: list[list[Any]] = []
        for source in sources:
            reads = ",".join(f"{name}={dataset}" for name, dataset in source.datasets)
            if runs and runs[-1][0] == reads:
                runs[-1][1] += 1
            else:
                runs.append([reads, 1])
        return runs


def _datasets(config: JobConfig, dataset: str | None, path: str, names: list[str]
              ) -> tuple[tuple[str, str], ...]:
    """The datasets feeding the model inputs. Where the input names none, the first such
    file's choice holds for every file: a glob whose files each hold one dataset under a
    different name is refused by describe (no such dataset) rather than mixed."""
    if config.mapping:
        return tuple((name, "/" + target.lstrip("/")) for name, target in config.mapping)
    return ((names[0], dataset or _hdf5().default_dataset(path, names[0])),)


@dataclass(frozen=True)
class ParquetInput:
    """Parquet input, resolved: its files, and the columns feeding each model input."""

    paths: tuple[str, ...]
    selection: ParquetSelection
    partition_by: tuple[str, ...] = ()  # one batch per group of equal values (partitions.py)


class ParquetSourceKind:
    """Parquet input: files, globs or dataset directories, by --map, --columns or the one
    column that cannot be a wrong guess."""

    label: str = "Parquet"
    suffixes: tuple[str, ...] = PARQUET_SUFFIXES
    directories: bool = True  # a directory, or a path without a suffix, is a Parquet dataset

    def resolve(self, config: JobConfig, paths: Resolved, inputs: list[TensorSpec]
                ) -> ParquetInput:
        files = tuple(file for _, path in paths for file in _files(path))
        return ParquetInput(files, _selection(config, files[0], inputs), config.partition_by)

    def describe(self, source: ParquetInput
                 ) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
        files, fields, kept = _parquet().describe(source.paths, source.selection)
        return files, fields, list(kept.values())

    def plan(self, source: ParquetInput, files: list[SourceFile], batch_size: BatchSize,
             row_nbytes: int) -> Plan:
        if not source.partition_by:
            return make_plan(files, batch_size.rows_for(row_nbytes))
        from .partitions import partition_plan

        return partition_plan(source.paths, source.partition_by, batch_size, row_nbytes)

    def bound(self, source: ParquetInput, files: tuple[SourceFile, ...]) -> ParquetInput:
        paths = _table_paths(source.paths, files)
        return source if paths is None else replace(source, paths=paths)

    def open_reader(self, source: ParquetInput) -> Reader:
        reader = _parquet().ParquetReader(source.paths, source.selection)
        if not source.partition_by:
            return reader
        from .partitions import HiveKeyReader

        return HiveKeyReader(reader, source.paths, source.partition_by)

    def names(self, source: ParquetInput) -> list[str]:
        return list(source.paths)

    def feeds(self, source: ParquetInput) -> list[Any]:
        """``["X=f0,f1,f2"]``: each model input's columns, in the order stacked."""
        return [f"{name}={','.join(columns)}" for name, columns in source.selection.features]


def _table_paths(paths: Sequence[str], files: tuple[SourceFile, ...]
                 ) -> tuple[str, ...] | None:
    """The file table's path objects for ``paths``, which must be its paths, in order (a
    batch's file_index indexes both); None where they are those objects already."""
    table = tuple(file.path for file in files)
    if len(table) != len(paths) or any(a != b for a, b in zip(paths, table, strict=True)):
        raise ValueError("an input is bound to the plan of its own files only")
    return None if all(a is b for a, b in zip(paths, table, strict=True)) else table


def _files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    found = dataset_files(path, PARQUET_SUFFIXES)
    if not found:
        raise InputError(f"--input {path}: directory holds no .parquet files")
    return found


def _selection(config: JobConfig, first: str, inputs: list[TensorSpec]) -> ParquetSelection:
    """--map, else --columns, else the one column that cannot be a wrong guess (never
    "every numeric column": that scored id and label columns as features). An entry
    script reads the columns as they are: --columns, else all of them."""
    parquet = _parquet()
    if config.scorer_kind == "script":
        if config.mapping:
            raise ConfigError("--map: an entry script gets Parquet columns by name; choose "
                              "them with --columns")
        schema = parquet.read_schema(first)
        columns = parquet.match_columns(first, schema, config.columns) if config.columns \
            else tuple(schema.names)
        return ParquetSelection((), tuple(dict.fromkeys([*columns, *config.keep_columns])))
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


class Hdf5SinkKind:
    """HDF5 output: one file of pre-allocated datasets, created on rank 0, whose row
    ranges every scoring process writes in place."""

    suffixes: tuple[str, ...] = HDF5_SUFFIXES
    directories: bool = False
    rank_zero_finishes: bool = True  # rank 0 marks the file complete and renames it

    def check(self, outputs: list[Field], kept: list[Field]) -> None:
        import numpy as np

        bad = [f.name for f in kept if np.dtype(f.dtype).kind not in "biuf"]
        if bad:
            raise ConfigError(f"--keep-columns {','.join(bad)}: not numeric, so they "
                              "cannot go to HDF5 output; write Parquet output instead")
        for field in outputs:
            if field.name.startswith(RESERVED_PREFIX):
                raise ConfigError(f"output {field.name!r}: names starting with "
                                  f"{RESERVED_PREFIX} are mpiscore's own in HDF5 output; "
                                  f"rename it (--rename {field.name}=NEW_NAME)")
            if np.dtype(field.dtype).kind not in "biufcS":
                raise ConfigError(f"output {field.name!r}: {np.dtype(field.dtype)} values "
                                  "cannot go to HDF5 output; write Parquet output, or "
                                  "return numbers or strings")

    def create(self, partial: Path, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        import numpy as np

        table = plan.batches
        if isinstance(table, BatchTable):  # its columns, made in C: no Batch made
            plan_rows = np.column_stack([np.frombuffer(column, dtype=np.int64)
                                         for column in table.columns()])
        else:
            plan_rows = np.array(plan.batch_rows_json(), dtype=np.int64).reshape(-1, 4)
        return _hdf5().create(partial, fields + kept, plan.total_rows, attrs, plan_rows)

    def reopen(self, partial: Path, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        return _hdf5().offsets(partial, fields + kept)

    def written(self, partial: Path, journal: set[int]) -> set[int]:
        return journal  # a journaled batch's rows were flushed before it was journaled

    def open_writer(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                    plan: Plan, offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        return _hdf5().Hdf5Writer(partial, final, fields + kept, offsets)

    def owned(self, path: Path) -> bool:
        return path.is_file() and _hdf5().owned(path)

    def damage(self, final: Path, batch_count: int) -> str | None:
        return _hdf5().damage(final)

    def warm(self) -> None:
        _hdf5()


class ParquetSinkKind:
    """Parquet output: a directory of one part file per batch (parquet.ParquetWriter)."""

    suffixes: tuple[str, ...] = PARQUET_SUFFIXES
    directories: bool = True
    rank_zero_finishes: bool = True  # rank 0 checks the part files and renames the directory

    def check(self, outputs: list[Field], kept: list[Field]) -> None:
        """Any column type can be carried to Parquet; outputs of every kind but complex
        numbers (which Arrow has no type for) can be written."""
        import numpy as np

        for field in outputs:
            if np.dtype(field.dtype).kind == "c":
                raise ConfigError(f"output {field.name!r}: complex values cannot go to "
                                  "Parquet output; return the real and imaginary parts as "
                                  "two columns, or write HDF5 output")

    def create(self, partial: Path, fields: list[Field], kept: list[Field], plan: Plan,
               attrs: dict[str, Any]) -> dict[str, int]:
        _parquet().create(partial)
        return {}

    def reopen(self, partial: Path, fields: list[Field], kept: list[Field]) -> dict[str, int]:
        return {}

    def written(self, partial: Path, journal: set[int]) -> set[int]:
        parquet = _parquet()
        parquet.discard_staged(partial)  # half-written by processes of the cut-short run
        return journal & parquet.written_batches(partial)

    def open_writer(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                    plan: Plan, offsets: dict[str, int], attrs: dict[str, Any]) -> Writer:
        return _parquet().ParquetWriter(partial, final, fields, kept, plan.batch_count, attrs)

    def owned(self, path: Path) -> bool:
        return path.is_dir() and _parquet().owned(path)

    def damage(self, final: Path, batch_count: int) -> str | None:
        return _parquet().missing_parts(final, batch_count)

    def warm(self) -> None:
        _parquet()
