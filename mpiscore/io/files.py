"""File input (source kind "files"): every input file is one item, handed to an entry
script as its path.

What the ``--input`` globs and directories name, in order, is the item space: a
glob's matches sorted (``**`` recursive, see sources.expand), and a directory's
every regular file below it, sorted by path as a ``**`` glob's would be, skipping
names that start with ``.`` (hidden files and directories) and not following
symbolic links to directories. Sizes are taken once, on rank 0, to pack batches
by bytes (plan.make_item_plan); the reader hands out paths and opens nothing, so
a file that cannot be read is the script's failure on its batch.

Once planned, the paths live in one place, the plan's file table: the job binds
its FilesInput to it (:meth:`FilesInput.bound`, Job), so a job of 100,000 files
carries one table to every rank and scoring process, not the table and a second
list of the same paths (and sizes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import BatchSize, JobConfig
from ..errors import ConfigError, InputError
from ..lock import lock_paths
from ..plan import Batch, Plan, SourceFile, make_item_plan
from .fields import FILE_PATHS, Columns, Field, Reader
from .threads import map_in_order

if TYPE_CHECKING:
    import numpy as np

    from ..config import InputSpec
    from ..model import TensorSpec


@dataclass(frozen=True)
class FilesInput:
    """File input, resolved: the files in item order, and their sizes in bytes; once
    bound to the plan, its file table instead (each file's path and stamped size),
    the same tuple as the plan's, and no paths or sizes of its own."""

    paths: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    files: tuple[SourceFile, ...] | None = None  # the plan's file table, once bound

    def bound(self, files: tuple[SourceFile, ...]) -> FilesInput:
        """This input with ``files``, the plan's file table, as its only list of paths."""
        if self.files is files:
            return self
        if len(files) != self.count or [f.path for f in files] != self.items(0, self.count):
            raise ValueError("a file input is bound to the plan of its own files only")
        return FilesInput(files=files)

    @property
    def count(self) -> int:
        return len(self.paths) if self.files is None else len(self.files)

    def items(self, first: int, stop: int) -> list[str]:
        """The paths of files ``first:stop``, in item order."""
        if self.files is None:
            return list(self.paths[first:stop])
        return [file.path for file in self.files[first:stop]]


class FilesSourceKind:
    """Arbitrary files, one item each: a batch is a list of paths (``FILE_PATHS``)."""

    label: str = "files"
    suffixes: tuple[str, ...] = ()  # chosen by --input-mode, never by a suffix
    directories: bool = False

    def resolve(self, config: JobConfig, paths: list[tuple[InputSpec, str]],
                inputs: list[TensorSpec]) -> FilesInput:
        _refuse_tabular_options(config)
        own = _own_paths(config)
        files = tuple(file for _, path in paths for file in directory_files(path)
                      if not _within(file, own))
        if not files:
            raise InputError(f"--input {', '.join(path for _, path in paths)}: no files but "
                             "this job's own (its output, lock and run directory)")
        return FilesInput(files, tuple(map_in_order(_size, files)))  # many stat-ed at once

    def describe(self, source: FilesInput
                 ) -> tuple[list[SourceFile], dict[str, Field], list[Field]]:
        """One item per file: the fingerprint then stamps every file, for --resume."""
        return [SourceFile(path, 1) for path in source.paths], {}, []

    def bound(self, source: FilesInput, files: tuple[SourceFile, ...]) -> FilesInput:
        return source.bound(files)

    def open_reader(self, source: FilesInput) -> Reader:
        return FilesReader(source)

    def names(self, source: FilesInput) -> list[str]:
        return source.items(0, source.count)

    def feeds(self, source: FilesInput) -> list[Any]:
        return []  # the script is given the paths, which the fingerprint has

    def plan(self, source: FilesInput, files: Sequence[SourceFile], batch_size: BatchSize,
             row_nbytes: int = 0) -> Plan:
        """Batches of consecutive files: ``--mini-batch-size N`` files, or bytes packed."""
        sizes = source.sizes if source.files is None else [f.size for f in source.files]
        return make_item_plan(files, batch_size, sizes)


def _own_paths(config: JobConfig) -> tuple[str, ...]:
    """This job's own files and folders, made before its input is listed: the output,
    OUTPUT.partial, the lock beside it and the run directory. A files job's input that
    holds its output (results written next to the data) must not take them as items:
    its locks and logs would be scored, and a resume would find the input changed."""
    output, run_dir = config.output, config.resolved_run_dir
    own = (output, output.with_name(output.name + ".partial"), run_dir,
           *lock_paths(output, run_dir))
    return tuple(os.path.abspath(path) for path in own)


def _within(path: str, folders: tuple[str, ...]) -> bool:
    full = os.path.abspath(path)
    return any(full == folder or full.startswith(folder + os.sep) for folder in folders)


def _refuse_tabular_options(config: JobConfig) -> None:
    given = [option for option, value in (
        ("--columns", config.columns), ("--keep-columns", config.keep_columns),
        ("--map", config.mapping), ("--partition-by", config.partition_by)) if value]
    if given:
        raise ConfigError(f"{', '.join(given)}: apply to tabular input (HDF5, Parquet), not to "
                          "file input (--input-mode files)")


def directory_files(path: str) -> list[str]:
    """``path`` itself, or, for a directory, every regular file below it sorted by path,
    skipping names that start with ``.``; symbolic links to directories are not
    followed (a loop would never end), links to files are taken."""
    if not os.path.isdir(path):
        return [path]
    found: list[str] = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, name) for name in names
                     if not name.startswith(".") and os.path.isfile(os.path.join(root, name)))
    if not found:
        raise InputError(f"--input {path}: directory holds no files (names starting with '.' "
                         "are skipped)")
    return sorted(found)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise InputError(f"--input {path}: cannot read: {exc.strerror or exc}") from exc


class FilesReader:
    """Gives each batch its files' paths; opening them is the script's business."""

    def __init__(self, source: FilesInput) -> None:
        self.source = source

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]:
        return {}, {FILE_PATHS: self.source.items(batch.file_index,
                                                  batch.file_index + batch.rows)}

    def close(self) -> None:
        """Nothing is open."""
