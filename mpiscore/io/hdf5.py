"""HDF5 input and output.

Reading: each rank opens the input files itself and slices its rows.
Writing: rank 0 creates the file with one contiguous, early-allocated dataset
per output and records their byte offsets; then the scoring processes of
every rank write their row ranges straight into those bytes with ``pwrite``
(so PyPI's serial h5py suffices, and no data passes through rank 0). The file
is named ``<output>.partial`` and marked ``mpiscore_status=incomplete`` until
every rank has finished; only then is it marked complete and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError, OutputError
from ..plan import Batch, SourceFile
from ..transport import barrier
from .fields import Columns, Field

STATUS_ATTR = "mpiscore_status"


@dataclass(frozen=True)
class Hdf5Source:
    """One input file and the dataset each model input reads from it."""

    path: str
    datasets: tuple[tuple[str, str], ...]  # (model input name, dataset path)


def describe(sources: Iterable[Hdf5Source]) -> tuple[list[SourceFile], dict[str, Field]]:
    """Row counts, chunk alignment and per-row fields of the input files (rank 0)."""
    files: list[SourceFile] = []
    fields: dict[str, Field] = {}
    for source in sources:
        with _open_input(source.path) as handle:
            datasets = [(name, _dataset(handle, source.path, path))
                        for name, path in source.datasets]
            files.append(SourceFile(source.path, _common_rows(source.path, datasets),
                                    _chunk_rows(datasets[0][1])))
            for name, dataset in datasets:
                field = Field(name, dataset.dtype.str, dataset.shape[1:],
                              f"{source.path}:{dataset.name}")
                _check_same_layout(fields.setdefault(name, field), field)
    return files, fields


def default_dataset(path: str, input_name: str) -> str:
    """The dataset to read when none was named: one called like the model input, or the only one."""
    with _open_input(path) as handle:
        if isinstance(handle.get(input_name), h5py.Dataset):
            return "/" + input_name
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append("/" + name)
                          if isinstance(obj, h5py.Dataset) else None)
    if len(names) == 1:
        return names[0]
    raise InputError(
        f"{path}: holds {len(names)} datasets ({', '.join(names[:5]) or 'none'}); "
        f"name one as {path}:/dataset or with --map {input_name}=/dataset")


def _open_input(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5: {exc}") from exc


def _dataset(handle: h5py.File, path: str, name: str) -> h5py.Dataset:
    node = handle.get(name)
    if not isinstance(node, h5py.Dataset):
        raise InputError(f"{path}:{name}: no such dataset")
    if node.ndim < 1 or node.dtype.kind not in "biuf":
        raise InputError(f"{path}:{name}: expected a numeric array with rows, "
                         f"found shape {node.shape} dtype {node.dtype}")
    return node


def _common_rows(path: str, datasets: list[tuple[str, h5py.Dataset]]) -> int:
    rows = {ds.name: ds.shape[0] for _, ds in datasets}
    if len(set(rows.values())) > 1:
        raise InputError(f"{path}: mapped datasets differ in row count: {rows}")
    return next(iter(rows.values()))


def _chunk_rows(dataset: h5py.Dataset) -> int:
    return dataset.chunks[0] if dataset.chunks else 1


def _check_same_layout(first: Field, other: Field) -> None:
    if (first.dtype, first.shape) != (other.dtype, other.shape):
        raise InputError(
            f"{other.where}: rows of shape {other.shape} dtype {other.dtype} differ from "
            f"{first.where} ({first.shape} {first.dtype}); all input files must agree")


class Hdf5Reader:
    """Reads batches from the input files, keeping recently used files open."""

    def __init__(self, sources: tuple[Hdf5Source, ...], max_open: int = 16) -> None:
        self.sources, self.max_open = sources, max_open
        self.open: dict[int, _OpenInput] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def read(self, batch: Batch) -> tuple[dict[str, np.ndarray], Columns]:
        """The batch's rows of every input, in buffers the next read reuses."""
        source = self.sources[batch.file_index]
        try:
            datasets = self._datasets(batch.file_index)
            arrays = {name: self._read_into_buffer(name, dataset, batch.start, batch.stop)
                      for name, dataset in datasets.items()}
        except (OSError, KeyError) as exc:
            raise InputError(f"{source.path} rows {batch.start}-{batch.stop - 1}: "
                             f"read failed: {exc}") from exc
        return arrays, {}

    def _read_into_buffer(self, name: str, dataset: _Input, start: int, stop: int
                          ) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dataset.dtype or \
                buffer.shape[1:] != dataset.row_shape or len(buffer) < stop - start:
            buffer = self.buffers[name] = np.empty((stop - start, *dataset.row_shape),
                                                   dataset.dtype)
        view = buffer[:stop - start]
        dataset.dataset.read_direct(view, np.s_[start:stop])
        return view

    def _datasets(self, file_index: int) -> dict[str, _Input]:
        """The open file's datasets by model input (h5py lookups cost per call: kept)."""
        opened = self.open.pop(file_index, None)  # re-inserted last: most recently used
        if opened is None:
            if len(self.open) >= self.max_open:
                least_recent = next(iter(self.open))
                self.open.pop(least_recent).handle.close()
            opened = _OpenInput.of(self.sources[file_index])
        self.open[file_index] = opened
        return opened.datasets

    def close(self) -> None:
        for opened in self.open.values():
            opened.handle.close()
        self.open.clear()


@dataclass(frozen=True)
class _Input:
    dataset: h5py.Dataset
    dtype: np.dtype
    row_shape: tuple[int, ...]


@dataclass(frozen=True)
class _OpenInput:
    handle: h5py.File
    datasets: dict[str, _Input]

    @classmethod
    def of(cls, source: Hdf5Source) -> _OpenInput:
        handle = _open_input(source.path)
        try:
            datasets = {name: handle[path] for name, path in source.datasets}
        except KeyError:
            handle.close()
            raise
        return cls(handle, {name: _Input(d, d.dtype, d.shape[1:]) for name, d in datasets.items()})


def create(partial: Path, fields: list[Field], rows: int, attrs: dict[str, Any],
           plan_rows: np.ndarray) -> dict[str, int]:
    """Create the output file with pre-allocated contiguous datasets (rank 0 only).

    Returns each dataset's byte offset in the file, where ranks write its rows.
    """
    try:
        with h5py.File(partial, "w") as handle:
            offsets = {field.name: _allocate(handle, field, rows) for field in fields}
            handle.attrs.update({STATUS_ATTR: "incomplete", **attrs})
            handle.create_dataset("_mpiscore/plan", data=plan_rows)
            handle["_mpiscore/plan"].attrs["columns"] = "batch_id,file_index,start,stop"
    except OSError as exc:
        raise OutputError(f"{partial}: cannot create HDF5 output: {exc}") from exc
    return offsets


def _allocate(handle: h5py.File, field: Field, rows: int) -> int:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple((rows, *field.shape))
    dtype = h5py.h5t.py_create(np.dtype(field.dtype), logical=True)
    dataset = h5py.h5d.create(handle.id, field.name.encode(), dtype, space, dcpl=dcpl)
    return dataset.get_offset()


def offsets(partial: Path, fields: list[Field]) -> dict[str, int]:
    """Byte offsets of the datasets of an existing partial output (for --resume)."""
    try:
        with h5py.File(partial, "r") as handle:
            return {f.name: handle[f.name].id.get_offset() for f in fields}
    except (OSError, KeyError) as exc:
        raise OutputError(f"{partial}: cannot reopen partial output to resume: {exc}") from exc


class Hdf5Writer:
    """Writes row ranges of every output dataset at their byte offsets with pwrite.

    Every scoring process opens the file itself; writes of different batches
    never overlap, and each is flushed to storage (fdatasync) before the
    batch is reported done, so the journal never claims rows that could be lost.
    """

    def __init__(self, partial: Path, final: Path, fields: list[Field],
                 offsets: dict[str, int]) -> None:
        self.partial, self.final = partial, final
        self.fields = {field.name: field for field in fields}
        self.offsets = offsets
        self.fd = -1

    def write(self, batch: Batch, columns: Columns) -> None:
        if self.fd < 0:
            self.fd = os.open(self.partial, os.O_WRONLY)
        for name, field in self.fields.items():
            if getattr(columns[name], "null_count", 0):  # a carried Arrow column with gaps
                raise OutputError(f"{self.final}:/{name} batch {batch.batch_id}: column has "
                                  "null values, which HDF5 cannot hold; write Parquet output")
            data = np.ascontiguousarray(columns[name], dtype=field.dtype)
            if data.shape != (batch.rows, *field.shape):
                raise OutputError(f"{self.final}:/{name} batch {batch.batch_id}: got shape "
                                  f"{data.shape}, expected {(batch.rows, *field.shape)}")
            _pwrite_all(self.fd, data, self.offsets[name] + batch.global_start * field.row_nbytes)
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finish(self, comm: Any | None, complete: bool) -> None:
        """After every rank is done: rank 0 marks the file complete and renames it."""
        barrier(comm)
        if complete and (comm is None or comm.Get_rank() == 0):
            with h5py.File(self.partial, "r+") as handle:
                handle.attrs[STATUS_ATTR] = "complete"
            os.replace(self.partial, self.final)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    raw = memoryview(data.reshape(-1).view(np.uint8))
    written = 0
    while written < len(raw):
        written += os.pwrite(fd, raw[written:], offset + written)
