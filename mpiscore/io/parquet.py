"""Parquet input and output.

Reading: feature columns are stacked into one 2-D tensor per model input (or
a fixed-size-list column feeds it directly); identifier columns can be
carried through untouched. Without ``--columns``/``--map`` only a choice that
cannot be a mistake is made (:func:`default_columns`). Writing: every batch
becomes one final file ``part-<batch_id:09d>.parquet`` of ``<output>.partial``
(see :class:`ParquetWriter`), renamed to ``<output>`` once complete; the
directory then holds Parquet files only, so every common reader (pyarrow,
pandas, polars, DuckDB) reads it as one table, in file name order, which is
input row order. Provenance travels in each file's key-value metadata
(key ``mpiscore``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError, OutputError, storage_error
from ..plan import Batch, SourceFile
from ..report import LOG
from . import staging
from .fields import Columns, Field, ParquetSelection, Ranks, checked_rows, cut, nearest_first
from .threads import map_in_order

STAGING = staging.STAGING  # inside OUTPUT.partial only: files being written, and our marker
METADATA_KEY = "mpiscore"  # key-value metadata of every part file: provenance, shapes
PART = re.compile(r"part-(\d{9})\.parquet")
TMP = re.compile(r"part-\d{9}\.parquet\.\d+\.tmp")  # in STAGING; the number is the pid
LOG_FINISH_PARTS = 10_000  # checking this many part files takes long enough to say so


def part_name(batch_id: int) -> str:
    """A batch's file: zero-padded, so name order is batch order is row order."""
    return f"part-{batch_id:09d}.parquet"


def read_schema(path: str) -> pa.Schema:
    return _open_input(path).schema_arrow


def match_columns(path: str, schema: pa.Schema, patterns: Sequence[str]) -> tuple[str, ...]:
    """Column names for ``--columns``: exact names, or globs (``f*``) in schema order. A
    name that is a column is that column even where it looks like a glob (``x[0]``
    would match ``x0``)."""
    names: list[str] = []
    for pattern in patterns:
        found = [n for n in schema.names if fnmatch.fnmatchcase(n, pattern)] \
            if glob.has_magic(pattern) and pattern not in schema.names else [pattern]
        if not found:
            raise InputError(f"{path}: no column matches {pattern!r}; columns: "
                             f"{nearest_first(pattern, schema.names, 12)}")
        names.extend(n for n in found if n not in names)
    return tuple(names)


def numeric_columns(schema: pa.Schema, exclude: Sequence[str]) -> tuple[str, ...]:
    """Names of the plain numeric columns, in schema order: candidates, never a default."""
    return tuple(f.name for f in schema if f.name not in exclude and _is_numeric(f.type))


def default_columns(path: str, schema: pa.Schema, name: str, row_shape: tuple[int | None, ...],
                    keep: Sequence[str]) -> tuple[str, ...]:
    """The column feeding model input ``name`` when neither --columns nor --map says.

    Only a choice that cannot be a mistake: a column named like the input (a
    fixed-size list, or a number when the input takes one value per row),
    else the file's only numeric fixed-size-list column. "Every numeric
    column" used to be the default and scored ``id`` and ``label`` columns as
    features, with exit 0 when the widths happened to match; anything else
    is now refused, listing the candidates and the option that fixes it.
    """
    fields = {f.name: f.type for f in schema if f.name not in keep}
    fixed = [d for d in row_shape if d is not None]
    width = math.prod(fixed) if len(fixed) == len(row_shape) else None
    named = fields.get(name)
    if named is not None and (_is_numeric_list(named) or (width == 1 and _is_numeric(named))):
        return (name,)
    lists = [column for column, kind in fields.items() if _is_numeric_list(kind)]
    if len(lists) == 1:
        return (lists[0],)
    wants = f"model input {name!r} ({_values(row_shape, width)} per row)"
    if lists:
        raise ConfigError(f"{path}: several fixed-size-list columns could feed {wants}: "
                          f"{cut(lists)}; pick one with --columns NAME")
    numeric = numeric_columns(schema, keep)
    if not numeric:
        raise InputError(f"{path}: no numeric column to feed {wants}; columns: "
                         f"{cut(schema.names)}")
    raise ConfigError(f"{path}: which columns feed {wants}? None is named {name!r} and there "
                      f"is no fixed-size-list column, so none is guessed from the numeric "
                      f"columns {cut(list(numeric))}; name them: "
                      f"--columns {_suggest(numeric, fields, width)}")


def _values(row_shape: tuple[int | None, ...], width: int | None) -> str:
    if width is None:
        return "a width the model leaves open"
    if len(row_shape) > 1:
        return f"{' x '.join(map(str, row_shape))} = {width} values"
    return "1 value" if width == 1 else f"{width} values"


def _suggest(numeric: Sequence[str], columns: dict[str, pa.DataType], width: int | None) -> str:
    """A --columns value for the likeliest features: numbered columns sharing a prefix
    (``f0..f15``), the run whose count matches the model's width first."""
    runs: dict[str, list[str]] = {}
    for column in numeric:
        match = re.fullmatch(r"(.*?)\d+", column)
        if match:
            runs.setdefault(match.group(1), []).append(column)
    if not runs:
        return "NAME,NAME,... (globs ok: 'f*')"
    prefix, run = max(runs.items(), key=lambda item: (len(item[1]) == width, len(item[1])))
    for pattern in (f"{prefix}*", f"{prefix}[0-9]*"):
        if prefix and [c for c in columns if fnmatch.fnmatchcase(c, pattern)] == run:
            return f"'{pattern}'"
    return ",".join(run)


def describe(paths: Sequence[str], selection: ParquetSelection
             ) -> tuple[list[SourceFile], dict[str, Field], dict[str, Field]]:
    """Row counts, row groups, the feature fields and the carried fields (rank 0)."""
    files: list[SourceFile] = []
    fields: dict[str, Field] = {}
    kept: dict[str, Field] = {}
    for source_file, schema in map_in_order(_footer, paths):  # many footers read at once
        path = source_file.path
        files.append(source_file)
        for name, columns in selection.features:
            _agree(fields, _feature_field(path, schema, name, columns))
        for column in selection.keep:
            kept_type = _column(path, schema, column).type
            _agree(kept, Field(column, _numpy_dtype(kept_type), (), f"{path}:{column}"))
    return files, fields, kept


def _footer(path: str) -> tuple[SourceFile, pa.Schema]:
    """A file's rows, row groups and schema, from its footer (pyarrow lets go of the GIL
    while reading it, so threads overlap)."""
    handle = _open_input(path)
    meta = handle.metadata
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return SourceFile(path, meta.num_rows, groups or (0,)), handle.schema_arrow


def _open_input(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot open as Parquet: {exc}") from exc


def _column(path: str, schema: pa.Schema, name: str) -> pa.Field:
    index = schema.get_field_index(name)
    if index < 0:
        raise InputError(f"{path}: no column {name!r}; columns: "
                         f"{nearest_first(name, schema.names, 12)}")
    return schema.field(index)


def _feature_field(path: str, schema: pa.Schema, name: str, columns: tuple[str, ...]) -> Field:
    types = [_column(path, schema, column).type for column in columns]
    shown = ",".join(columns) if len(columns) <= 4 else \
        f"{columns[0]},...,{columns[-1]} ({len(columns)} columns)"
    where = f"{path}:{shown}"
    if len(types) == 1 and pa.types.is_fixed_size_list(types[0]):
        value_type = types[0].value_type
        if not _is_numeric(value_type):
            raise InputError(f"{where}: list items are {value_type}, not numbers")
        return Field(name, _numpy_dtype(value_type), (types[0].list_size,), where, flat=True)
    bad = [f"{c} ({t})" for c, t in zip(columns, types, strict=True) if not _is_numeric(t)]
    if bad:
        raise InputError(f"{path}: feature columns must be numeric or one fixed-size list; "
                         f"not {', '.join(bad)}")
    own = [_numpy_dtype(t) for t in types]
    return Field(name, np.result_type(*own).str, (len(columns),), where, flat=True,
                 column_dtypes=tuple(zip(columns, own, strict=True)) if len(own) > 1 else ())


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type))


def _is_numeric_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(arrow_type) and _is_numeric(arrow_type.value_type)


def _numpy_dtype(arrow_type: pa.DataType) -> str:
    try:
        return np.dtype(arrow_type.to_pandas_dtype()).str
    except (NotImplementedError, TypeError):
        return "|O"


def _agree(fields: dict[str, Field], field: Field) -> None:
    """Every file's field must be the first file's, column by column: the binding judges
    the first file's columns, so a later ``id`` of another dtype would go unjudged."""
    first = fields.setdefault(field.name, field)
    if len(field.column_dtypes) == len(first.column_dtypes):  # the column that differs
        for (column, dtype), (_, before) in zip(field.column_dtypes, first.column_dtypes,
                                                strict=True):
            if dtype != before:
                raise InputError(f"{field.where}: column {column} is {np.dtype(dtype)}, in "
                                 f"{first.where} {np.dtype(before)}; all files must agree")
    if (first.dtype, first.shape) != (field.dtype, field.shape):
        raise InputError(f"{field.where}: {field.shape} {field.dtype} differs from "
                         f"{first.where} ({first.shape} {first.dtype}); all files must agree")


class ParquetReader:
    """Reads the row groups covering a batch and slices its rows out."""

    def __init__(self, paths: tuple[str, ...], selection: ParquetSelection) -> None:
        self.paths, self.selection = paths, selection
        self.handles: dict[int, tuple[pq.ParquetFile, np.ndarray]] = {}

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]:
        path = self.paths[batch.file_index]
        try:
            table = self._rows(batch)
            features = {name: _stack(table, columns)
                        for name, columns in self.selection.features}
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise InputError(f"{path} rows {batch.start}-{batch.stop - 1}: {exc}") from exc
        return features, {name: table.column(name) for name in self.selection.keep}

    def _rows(self, batch: Batch) -> pa.Table:
        handle, group_starts = self._handle(batch.file_index)
        first = int(np.searchsorted(group_starts, batch.start, side="right")) - 1
        last = int(np.searchsorted(group_starts, batch.stop, side="left"))
        table = handle.read_row_groups(list(range(first, last)), columns=self.selection.columns,
                                       use_threads=False)
        return table.slice(batch.start - int(group_starts[first]), batch.rows)

    def _handle(self, file_index: int) -> tuple[pq.ParquetFile, np.ndarray]:
        if file_index not in self.handles:
            handle = _open_input(self.paths[file_index])
            meta = handle.metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.handles = {file_index: (handle, np.cumsum([0, *sizes]))}
        return self.handles[file_index]

    def close(self) -> None:
        self.handles.clear()


def _stack(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Stack numeric columns side by side, or unpack one fixed-size-list column."""
    arrays = [table.column(c).combine_chunks() for c in columns]
    for column, array in zip(columns, arrays, strict=True):
        if array.null_count:
            raise ValueError(f"column {column!r} has {array.null_count} null values")
    if len(arrays) == 1 and pa.types.is_fixed_size_list(arrays[0].type):
        values = arrays[0].flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(arrays[0]), arrays[0].type.list_size)
    return np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays])


def to_arrow(array: np.ndarray) -> pa.Array:
    """One output column: a scalar per row, or a fixed-size list per row (flattened).

    Text, as NumPy unicode or UTF-8 bytes (the fill values of failed batches),
    is always Arrow ``string``, so every part of the output has one schema.
    """
    flat = array.reshape(-1)
    if array.dtype.kind == "S":
        values = pa.array(flat, type=pa.binary()).cast(pa.string())
    else:
        values = pa.array(flat, type=pa.string() if array.dtype.kind == "U" else None)
    if array.ndim == 1:
        return values
    return pa.FixedSizeListArray.from_arrays(values, math.prod(array.shape[1:]))


class ParquetWriter:
    """Writes every batch once, as its own final part file: nothing is merged at the end.

    Why this layout: merging small batches into ~256 MB files after the last
    batch (the former layout) rewrote the whole output at the end of the job,
    which took 129 s of silence on a 20M-row job whose HDF5 output needed 22 s
    in all. A batch's file is named by its batch id, which is row order, so
    file name order is row order for every reader. It is written to a
    temporary name in ``_staging/``, flushed by :meth:`sync` and only then
    renamed to ``part-<batch_id:09d>.parquet``: the name is what ``--resume``
    counts as written. ``finish`` checks that every batch's file is there and
    renames the directory. The number of files is the number of batches;
    ``--mini-batch-size`` sets it (README, "Outputs").
    """

    def __init__(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                 batch_count: int, metadata: dict[str, Any]) -> None:
        self.partial, self.final = partial, final
        self.names = [f.name for f in kept] + [f.name for f in fields]
        self.fields = {f.name: f for f in fields}  # the model's: checked batch by batch
        self.batch_count = batch_count  # ids 0 to batch_count - 1: no batch list needed
        self.info = {**metadata, "status": "complete",
                     "output_shapes": {f.name: list(f.shape) for f in fields}}
        self.unsynced: list[tuple[Path, Path]] = []  # (written .tmp, its part name) to flush

    def write(self, batch: Batch, columns: Columns) -> None:
        arrays = [self._arrow(name, columns[name], batch) for name in self.names]
        table = pa.table(arrays, names=self.names).replace_schema_metadata(
            {METADATA_KEY: json.dumps(self._info(batch))})
        target = self.partial / part_name(batch.batch_id)
        temporary = self.partial / STAGING / f"{target.name}.{os.getpid()}.tmp"
        try:
            pq.write_table(table, temporary, row_group_size=max(1, batch.rows),
                           use_dictionary=_dictionary_columns(table.schema))
        except OSError as exc:
            raise storage_error(target, exc, f"cannot write batch {batch.batch_id}") from exc
        self.unsynced.append((temporary, target))

    def _arrow(self, name: str, column: object, batch: Batch) -> pa.Array | pa.ChunkedArray:
        if isinstance(column, pa.ChunkedArray | pa.Array):  # carried as read
            return column
        field = self.fields.get(name)
        if field is None:
            return to_arrow(np.asarray(column))
        return to_arrow(checked_rows(column, field, batch, f"{self.final}: output {name}"))

    def _info(self, batch: Batch) -> dict[str, Any]:
        """The ``mpiscore`` metadata of one part file: the job's, and the batch's rows.

        ``status`` is ``complete`` because a file carries its part name only once
        it holds its whole batch; the dataset is complete once the directory has
        its final name, which happens only after every batch is written.
        """
        return {**self.info, "batch_id": batch.batch_id,
                "row_range": [batch.global_start, batch.global_stop]}

    def sync(self) -> None:
        """Flush each batch written since the last sync, then give it its part name: a
        part file under its name is what --resume counts as written."""
        unsynced, self.unsynced = self.unsynced, []
        for temporary, target in unsynced:
            try:
                staging.durable_replace(temporary, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot flush batch output: {exc}") from exc

    def close(self) -> None:
        """Nothing stays open between batches."""

    def finish(self, ranks: Ranks, complete: bool) -> None:
        """After every rank is done: rank 0 checks every batch's file, then commits (the
        other ranks pass the barrier without a writer: OutputTarget.finisher).

        An incomplete job leaves the part files as they are, for --resume.
        """
        ranks.barrier()
        if complete and ranks.rank == 0:
            self._commit()

    def _commit(self) -> None:
        if self.batch_count >= LOG_FINISH_PARTS:
            LOG.info("checking the %d part files of %s, then renaming it to %s",
                     self.batch_count, self.partial, self.final.name)
        missing = missing_parts(self.partial, self.batch_count)
        if missing:
            raise OutputError(f"{self.partial}: {missing}; rerun with --resume "
                              "(resume=True) to write them")
        try:
            discard_staged(self.partial)
            with contextlib.suppress(FileNotFoundError):  # a commit killed after this step
                (self.partial / STAGING).rmdir()
            os.replace(self.partial, self.final)
        except OSError as exc:
            raise OutputError(f"{self.partial}: cannot rename to {self.final}: {exc}") from exc


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: plain, not floating point (labels, ids, status).

    Scores are floats with few repeats: trying a dictionary on them (pyarrow's
    default for every column) made writing a batch five times slower, for
    nothing, since pyarrow falls back to plain encoding anyway.
    """
    return [f.name for f in schema if not pa.types.is_floating(f.type)
            and not pa.types.is_nested(f.type)]


def create(partial: Path) -> None:
    """Create the output directory and its staging area (rank 0 only)."""
    try:
        (partial / STAGING).mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"{partial}: cannot create Parquet output: {exc}") from exc


def missing_parts(path: Path, batch_count: int) -> str | None:
    """Which of batches ``0 .. batch_count - 1`` have no part file in ``path``, in words
    (None: none): by names alone, so that a check costs one listing."""
    try:
        present = written_batches(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot list the part files: {exc}") from exc
    missing = [batch_id for batch_id in range(batch_count) if batch_id not in present]
    return f"part files of batches {cut(missing)} are missing" if missing else None


def written_batches(partial: Path) -> set[int]:
    """Batches whose part file is on disk under its name (what --resume may skip)."""
    return staging.written_batches(partial, PART)


def discard_staged(partial: Path) -> None:
    """Delete files a killed scoring process left half-written in the staging area."""
    staging.discard_staged(partial, TMP)


def owned(path: Path) -> bool:
    """Whether ``path`` is a Parquet output or partial output that mpiscore wrote.

    So that --overwrite deletes only what is ours: every entry must be a part
    file carrying our ``mpiscore`` metadata (each footer is read: names alone
    prove nothing), or, in a partial output, the ``_staging`` area holding only
    our temporary files. An empty ``_staging`` is what marks a partial output
    that has no part file yet; a directory with nothing in it is not ours.
    """
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        entries = list(os.scandir(path))
        if any(e.name != STAGING and not PART.fullmatch(e.name) for e in entries):
            return False
        staging = [e for e in entries if e.name == STAGING]
        if staging and not _staging_owned(staging[0]):
            return False
        parts = [e for e in entries if e.name != STAGING]
        return bool(entries) and all(e.is_file(follow_symlinks=False) and _has_metadata(e.path)
                                     for e in parts)
    except OSError:
        return False


def _staging_owned(entry: os.DirEntry) -> bool:
    if not entry.is_dir(follow_symlinks=False):
        return False
    with os.scandir(entry.path) as inside:
        return all(TMP.fullmatch(e.name) and e.is_file(follow_symlinks=False) for e in inside)


def _has_metadata(path: str) -> bool:
    try:
        metadata = pq.read_metadata(path).metadata or {}
        json.loads(metadata[METADATA_KEY.encode()])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return False
    return True
