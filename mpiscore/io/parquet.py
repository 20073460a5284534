"""Parquet input and output.

Reading: feature columns are stacked into one 2-D tensor per model input (or
a fixed-size-list column feeds it directly); identifier columns can be
carried through untouched. Writing: each rank writes its batches as staged
files, then at the end the ranks merge runs of consecutive small batches, in
parallel, into ``part-NNNNNN.parquet`` files of ~256 MB, numbered in row
order; a directory ``<output>.partial`` is renamed to ``<output>`` only once
complete. ``pyarrow.dataset.dataset(output)`` (and pandas, DuckDB globs) read
the files in name order, which is input row order.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, OutputError
from ..plan import Batch, SourceFile
from ..transport import barrier
from .fields import Columns, Field, ParquetSelection

STAGING = "_staging"
METADATA = "_mpiscore.json"
PART_TARGET_BYTES = 256 * 2**20


def read_schema(path: str) -> pa.Schema:
    return _open_input(path).schema_arrow


def match_columns(path: str, schema: pa.Schema, patterns: Sequence[str]) -> tuple[str, ...]:
    """Column names for ``--columns``: exact names, or globs (``f*``) in schema order."""
    names: list[str] = []
    for pattern in patterns:
        found = [n for n in schema.names if fnmatch.fnmatchcase(n, pattern)] \
            if glob.has_magic(pattern) else [pattern]
        if not found:
            raise InputError(f"{path}: no column matches {pattern!r}")
        names.extend(n for n in found if n not in names)
    return tuple(names)


def numeric_columns(schema: pa.Schema, exclude: Sequence[str]) -> tuple[str, ...]:
    """Names of the plain numeric columns, in schema order: the default features."""
    return tuple(f.name for f in schema if f.name not in exclude and _is_numeric(f.type))


def describe(paths: Sequence[str], selection: ParquetSelection
             ) -> tuple[list[SourceFile], dict[str, Field], dict[str, Field]]:
    """Row counts, row groups, the feature fields and the carried fields (rank 0)."""
    files, fields, kept = [], {}, {}
    for path in paths:
        handle = _open_input(path)
        meta = handle.metadata
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        files.append(SourceFile(path, meta.num_rows, groups or (0,)))
        schema = handle.schema_arrow
        for name, columns in selection.features:
            _agree(fields, _feature_field(path, schema, name, columns))
        for column in selection.keep:
            kept_type = _column(path, schema, column).type
            _agree(kept, Field(column, _numpy_dtype(kept_type), (), f"{path}:{column}"))
    return files, fields, kept


def _open_input(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot open as Parquet: {exc}") from exc


def _column(path: str, schema: pa.Schema, name: str) -> pa.Field:
    index = schema.get_field_index(name)
    if index < 0:
        raise InputError(f"{path}: no column {name!r} (columns: {', '.join(schema.names[:12])})")
    return schema.field(index)


def _feature_field(path: str, schema: pa.Schema, name: str, columns: tuple[str, ...]) -> Field:
    types = [_column(path, schema, column).type for column in columns]
    where = f"{path}:{','.join(columns)}"
    if len(types) == 1 and pa.types.is_fixed_size_list(types[0]):
        value_type = types[0].value_type
        if not _is_numeric(value_type):
            raise InputError(f"{where}: list items are {value_type}, not numbers")
        return Field(name, _numpy_dtype(value_type), (types[0].list_size,), where, flat=True)
    bad = [f"{c} ({t})" for c, t in zip(columns, types, strict=True) if not _is_numeric(t)]
    if bad:
        raise InputError(f"{path}: feature columns must be numeric or one fixed-size list; "
                         f"not {', '.join(bad)}")
    dtype = np.result_type(*[_numpy_dtype(t) for t in types])
    return Field(name, dtype.str, (len(columns),), where, flat=True)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type))


def _numpy_dtype(arrow_type: pa.DataType) -> str:
    try:
        return np.dtype(arrow_type.to_pandas_dtype()).str
    except (NotImplementedError, TypeError):
        return "|O"


def _agree(fields: dict[str, Field], field: Field) -> None:
    first = fields.setdefault(field.name, field)
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
    """Stages each batch as a file, then merges small consecutive ones in parallel."""

    def __init__(self, partial: Path, final: Path, fields: list[Field], kept: list[Field],
                 batches: Sequence[Batch], metadata: dict[str, Any]) -> None:
        self.partial, self.final = partial, final
        self.names = [f.name for f in kept] + [f.name for f in fields]
        self.kept = {f.name for f in kept}
        self.shapes = {f.name: list(f.shape) for f in fields}
        self.batches, self.metadata = batches, metadata
        row_nbytes = sum(f.row_nbytes for f in fields) + 8 * len(kept)
        self.groups = group_batches(batches, row_nbytes, PART_TARGET_BYTES)
        self.unsynced: list[Path] = []  # staged as .tmp, not yet flushed and named

    def write(self, batch: Batch, columns: Columns) -> None:
        arrays = [c if isinstance(c, pa.ChunkedArray | pa.Array) else to_arrow(np.asarray(c))
                  for c in (columns[name] for name in self.names)]
        table = pa.table(arrays, names=self.names)
        target = self._staged(batch.batch_id)
        try:
            pq.write_table(table, f"{target}.tmp")
        except OSError as exc:
            raise OutputError(f"{target}: cannot write batch {batch.batch_id}: {exc}") from exc
        self.unsynced.append(target)

    def sync(self) -> None:
        """Flush each batch staged since the last sync, then give it its name: a staged
        file under its name is what --resume counts as written."""
        unsynced, self.unsynced = self.unsynced, []
        for target in unsynced:
            try:
                fd = os.open(f"{target}.tmp", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(f"{target}.tmp", target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot flush staged batch: {exc}") from exc

    def close(self) -> None:
        """Nothing stays open between batches."""

    def _staged(self, batch_id: int) -> Path:
        return self.partial / STAGING / f"batch-{batch_id:09d}.parquet"

    def finish(self, comm: Any | None, complete: bool) -> None:
        """Merge staged batches into part files (ranks share the groups), then commit.

        An incomplete job leaves the staged batches as they are, for --resume.
        """
        barrier(comm)
        if not complete:
            return
        rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
        for part in range(rank, len(self.groups), size):
            self._merge(part, self.groups[part])
        barrier(comm)
        if rank == 0:
            self._commit()

    def _merge(self, part: int, batch_ids: list[int]) -> None:
        staged = [self._staged(batch_id) for batch_id in batch_ids]
        target = self.partial / f"part-{part:06d}.parquet"
        if len(staged) == 1:
            os.replace(staged[0], target)
            return
        table = pa.concat_tables(pq.read_table(path) for path in staged)
        pq.write_table(table, f"{target}.tmp", row_group_size=max(1, max(
            self.batches[i].rows for i in batch_ids)))
        os.replace(f"{target}.tmp", target)
        for path in staged:
            path.unlink()

    def _commit(self) -> None:
        (self.partial / STAGING).rmdir()
        info = {**self.metadata, "status": "complete", "parts": len(self.groups),
                "output_shapes": self.shapes}
        (self.partial / METADATA).write_text(json.dumps(info, indent=2))
        os.replace(self.partial, self.final)


def create(partial: Path) -> None:
    """Create the output directory and its staging area (rank 0 only)."""
    try:
        (partial / STAGING).mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"{partial}: cannot create Parquet output: {exc}") from exc


def group_batches(batches: Iterable[Batch], row_nbytes: int, target_bytes: int
                  ) -> list[list[int]]:
    """Runs of consecutive batches whose output adds up to about ``target_bytes``."""
    groups: list[list[int]] = []
    size = target_bytes
    for batch in batches:
        if size >= target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(batch.batch_id)
        size += batch.rows * row_nbytes
    return groups


def staged_batches(partial: Path) -> set[int]:
    """Batches whose staged output is on disk (what --resume may skip)."""
    return {int(p.stem.split("-")[1]) for p in (partial / STAGING).glob("batch-*.parquet")}
