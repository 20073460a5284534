"""``--partition-by``: a plan of Parquet input with one mini-batch per distinct key value.

Azure's ``partition_keys``: a script's ``run()`` sees a whole group (say every row of
one user) at once. A key is a column of the files, or a hive-style directory level
``KEY=value/`` in a file's path (pyarrow's convention, as ``write_to_dataset`` writes:
values URL-encoded, null as ``__HIVE_DEFAULT_PARTITION__``); in a file under such a
directory every row has that value. Several keys group on the tuple of their values.

Rank 0 builds the plan by reading the key columns only, one column and one row group at
a time, so memory stays at one row group of one column. What the plan promises:

* one batch per group, in row order across files (batch ids and global rows numbered
  as :func:`mpiscore.plan.make_plan` does them);
* a group larger than ``--mini-batch-size`` is split into near-equal pieces, each at
  most that size: it is the one case where ``run()`` sees a group in several calls;
* batches never span files (a :class:`~mpiscore.plan.Batch` is rows of ONE file), so
  a group spread over several files (a hive directory of several files, say) reaches
  ``run()`` once per file;
* null key values form their own group, as do NaN values of a float key;
* small groups are never packed together: a million distinct values make a million
  batches, each with its scheduling cost.

Rows of one value must be contiguous within a file; when a value comes back after
another one the plan is refused (:class:`~mpiscore.errors.InputError`, naming the rows),
since silently making it two groups would break what ``run()`` is promised.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import urllib.parse
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import BatchSize
from ..errors import ConfigError, InputError
from ..plan import Batch, Plan, SourceFile
from .fields import Columns, Reader, nearest_first

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # pyarrow's directory name for a null value
NAN = object()  # stands for every NaN key value, which never equals itself
SHOWN = 12  # names listed in a message before "... and N more"

Run = tuple[int, Any]  # (first row, value) of a run of equal values
Group = tuple[int, int, tuple[Any, ...]]  # rows start:stop of one file, and their key


def hive_values(path: str, keys: Sequence[str] | None = None) -> dict[str, str | None]:
    """The ``KEY=value`` directory levels of ``path`` (all of them, or only ``keys``).

    Values are URL-decoded as pyarrow writes them; ``__HIVE_DEFAULT_PARTITION__`` is
    None (a null value). Where a name occurs at several levels the deepest wins, being
    the nearest to the file. The file name itself is not a level.
    """
    values: dict[str, str | None] = {}
    for part in os.path.normpath(os.path.dirname(path)).split(os.sep):
        name, sep, raw = part.partition("=")
        if sep and name and (keys is None or name in keys):
            value = urllib.parse.unquote(raw)
            values[name] = None if value == HIVE_NULL else value
    return values


def check_keys(paths: Sequence[str], keys: Sequence[str]) -> None:
    """Refuse keys that some file has neither as a column nor as a directory level
    (ConfigError, exit 2: the option names something that is not there)."""
    for path in paths:
        _key_sources(path, _open(path).schema_arrow, keys)


def partition_plan(paths: Sequence[str], keys: Sequence[str], batch_size: BatchSize,
                   row_nbytes: int) -> Plan:
    """One batch per group of equal key values, split where a group is larger than the
    batch size (``batch_size.rows``, or bytes over ``row_nbytes``) or spans files."""
    if not keys:
        raise ConfigError("--partition-by: give at least one column name")
    target = batch_size.rows_for(row_nbytes)
    files: list[SourceFile] = []
    batches: list[Batch] = []
    offset = 0
    for file_index, path in enumerate(paths):
        rows, groups = file_groups(path, keys)
        for start, stop, _ in groups:
            for piece_start, piece_stop in _pieces(int(start), int(stop), target):
                batches.append(Batch(len(batches), file_index, piece_start, piece_stop,
                                     offset + piece_start))
        files.append(SourceFile(path, rows, 1))
        offset += rows
    return Plan(tuple(files), tuple(batches), target)


def file_groups(path: str, keys: Sequence[str]) -> tuple[int, list[Group]]:
    """The file's row count and its groups ``(start, stop, key values)`` in row order;
    InputError when a value comes back after another one."""
    handle = _open(path)
    columns, fixed = _key_sources(path, handle.schema_arrow, keys)
    rows = handle.metadata.num_rows
    if rows == 0:
        return 0, []
    per_key = [_column_runs(handle, path, key) if key in columns else [(0, fixed[key])]
               for key in keys]
    groups = _groups(_tuple_runs(per_key), rows)
    _check_contiguous(path, keys, groups)
    return rows, groups


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot open as Parquet: {exc}") from exc


def _key_sources(path: str, schema: pa.Schema, keys: Sequence[str]
                 ) -> tuple[set[str], dict[str, str | None]]:
    """Which keys are columns of the file, and the values of those given by directories.

    A column wins over a directory of the same name: it holds the rows' own values.
    """
    columns = {key for key in keys if schema.get_field_index(key) >= 0}
    directories = hive_values(path)
    fixed = {key: directories[key] for key in keys if key not in columns and key in directories}
    missing = [key for key in keys if key not in columns and key not in fixed]
    if missing:
        key = missing[0]
        levels = f"; key=value/ directories: {', '.join(directories)}" if directories else ""
        raise ConfigError(f"--partition-by {key}: no column or key=value/ directory of that "
                          f"name in {path}; columns: "
                          f"{nearest_first(key, schema.names, SHOWN)}{levels}")
    return columns, fixed


def _column_runs(handle: pq.ParquetFile, path: str, column: str) -> list[Run]:
    """(first row, value) of each run of equal values of one column.

    Read one row group at a time; the last value of the previous group is put in front
    of the next, so a run crossing a row group boundary stays one run.
    """
    runs: list[Run] = []
    previous: pa.Array | None = None
    offset = 0
    for index in range(handle.metadata.num_row_groups):
        try:
            table = handle.read_row_group(index, columns=[column], use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read --partition-by column {column!r} "
                             f"(row group {index}): {exc}") from exc
        values = _comparable(table.column(0))
        if len(values) == 0:
            continue
        if previous is None:
            runs.append((0, values[0].as_py()))
            joined, base = values, offset
        else:
            joined, base = pa.concat_arrays([previous, values]), offset - 1
        runs.extend((base + i, joined[i].as_py()) for i in _changes(path, column, joined))
        previous = values.slice(len(values) - 1, 1)
        offset += len(values)
    return runs


def _comparable(values: pa.ChunkedArray) -> pa.Array:
    """One array of plain values (dictionary-encoded columns, such as pandas
    categoricals, compare by their values)."""
    array = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _changes(path: str, column: str, values: pa.Array) -> np.ndarray:
    """Positions ``i >= 1`` where ``values[i]`` differs from ``values[i - 1]``; null
    equals null and NaN equals NaN, so each forms one run."""
    if len(values) < 2:
        return np.empty(0, dtype=np.int64)
    after, before = values.slice(1), values.slice(0, len(values) - 1)
    try:
        differ = pc.fill_null(pc.not_equal(after, before), False)
    except pa.ArrowNotImplementedError as exc:
        raise InputError(f"{path}: --partition-by {column}: a {values.type} column cannot "
                         "be a key; use a column of numbers, strings, dates or booleans"
                         ) from exc
    if pa.types.is_floating(values.type):
        both_nan = pc.fill_null(pc.and_(pc.is_nan(after), pc.is_nan(before)), False)
        differ = pc.and_(differ, pc.invert(both_nan))
    differ = pc.or_(differ, pc.xor(pc.is_null(after), pc.is_null(before)))
    return np.flatnonzero(differ.to_numpy(zero_copy_only=False)) + 1


def _tuple_runs(per_key: list[list[Run]]) -> list[Run]:
    """Runs of the tuple of key values: a new one wherever any key's value changes."""
    starts = sorted({start for runs in per_key for start, _ in runs})
    firsts = [[start for start, _ in runs] for runs in per_key]
    return [(start, tuple(runs[bisect.bisect_right(first, start) - 1][1]
                          for runs, first in zip(per_key, firsts, strict=True)))
            for start in starts]


def _groups(runs: list[Run], rows: int) -> list[Group]:
    stops = [start for start, _ in runs[1:]] + [rows]
    return [(start, stop, key) for (start, key), stop in zip(runs, stops, strict=True)]


def _check_contiguous(path: str, keys: Sequence[str], groups: list[Group]) -> None:
    seen: dict[tuple[Hashable, ...], Group] = {}
    for group in groups:
        value = _hashable(group[2])
        first = seen.get(value)
        if first is None:
            seen[value] = group
        else:
            names = ",".join(keys)
            shown = repr(group[2][0]) if len(keys) == 1 else repr(group[2])
            directories = "/".join(f"{key}=value" for key in keys)
            raise InputError(
                f"{path}: --partition-by {names}: value {shown} is in rows {first[0]}-"
                f"{first[1] - 1} and again from row {group[0]}, after other values; rows of "
                f"one value must be together: sort the data by {names} or write it "
                f"partitioned into {directories}/ directories")


def _hashable(values: tuple[Any, ...]) -> tuple[Hashable, ...]:
    """Key values as a dict key: NaN equal to NaN, lists and the like by their text."""
    def one(value: Any) -> Hashable:
        if isinstance(value, float) and math.isnan(value):
            return NAN
        return value if isinstance(value, Hashable) else repr(value)
    return tuple(one(value) for value in values)


def _pieces(start: int, stop: int, target: int) -> list[tuple[int, int]]:
    """``start:stop`` as it is when it fits ``target`` rows, else in near-equal pieces."""
    pieces = math.ceil((stop - start) / target)
    bounds = [start + (stop - start) * i // pieces for i in range(pieces + 1)]
    return list(itertools.pairwise(bounds))


class HiveKeyReader:
    """A Parquet reader whose batches also carry the ``--partition-by`` keys that only a
    ``key=value/`` directory holds, as string columns (what pyarrow's dataset reader
    adds), so that an entry script sees which group it scores."""

    def __init__(self, reader: Reader, paths: Sequence[str], keys: Sequence[str]) -> None:
        self.reader, self.paths, self.keys = reader, paths, keys

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]:
        arrays, kept = self.reader.read(batch)
        values = hive_values(self.paths[batch.file_index], self.keys)
        extra = {key: pa.array([value] * batch.rows, type=pa.string())
                 for key, value in values.items() if key not in kept}
        return arrays, {**kept, **extra}

    def close(self) -> None:
        self.reader.close()
