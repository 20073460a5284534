"""HDF5 input and output.

Reading: each scoring process opens the input files itself and reads its rows
into a reused buffer; rows stored as plain bytes are read with ``preadv``
(RawRows), the rest by HDF5.
Writing: rank 0 creates the file with one contiguous, early-allocated dataset
per output and records their byte offsets; then the scoring processes of
every rank write their row ranges straight into those bytes with ``pwrite``
(so PyPI's serial h5py suffices, and no data passes through rank 0). The file
is named ``<output>.partial`` and marked ``mpiscore_status=incomplete`` until
every rank has finished; only then is it marked complete and renamed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config import RESERVED_PREFIX
from ..errors import RERUN, InputError, OutputError, storage_error
from ..plan import Batch, SourceFile
from .fields import Columns, Field, Ranks, checked_rows, nearest_first
from .sources import Hdf5Source

PLAN_DATASET = f"{RESERVED_PREFIX}/plan"  # the batches the file's rows came from

STATUS_ATTR = "mpiscore_status"


def describe(sources: Iterable[Hdf5Source]) -> tuple[list[SourceFile], dict[str, Field]]:
    """Row counts, chunk alignment and per-row fields of the input files (rank 0).

    Many files are described by a few processes at once (:func:`_describe_many`);
    the first error in file order is raised, as a loop would."""
    files: list[SourceFile] = []
    fields: dict[str, Field] = {}
    for source_file, found in _describe_many(list(sources)):
        files.append(source_file)
        for field in found:
            _check_same_layout(fields.setdefault(field.name, field), field)
    return files, fields


PROCESSES_FROM = 1000  # files; fewer are described in this process (a pool costs ~0.1 s)
FILES_PER_TASK = 64
DESCRIBE_PROCESSES = 8


def _describe_many(sources: list[Hdf5Source]) -> list[tuple[SourceFile, list[Field]]]:
    """Each file's SourceFile and fields, in order. HDF5 calls hold one lock per process
    (h5py's), so threads cannot overlap them: many files are shared out to forked
    processes, which have h5py loaded already and only read."""
    # more processes than cores: on a parallel filesystem an open mostly waits
    workers = min(DESCRIBE_PROCESSES, math.ceil(len(sources) / FILES_PER_TASK))
    if len(sources) < PROCESSES_FROM or workers < 2:
        return [_describe_one(source) for source in sources]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_describe_one, sources, chunksize=FILES_PER_TASK))


def _describe_one(source: Hdf5Source) -> tuple[SourceFile, list[Field]]:
    with _open_input(source.path) as handle:
        datasets = [(name, _dataset(handle, source.path, path))
                    for name, path in source.datasets]
        found = [Field(name, dataset.dtype.str, dataset.shape[1:],
                       f"{source.path}:{dataset.name}") for name, dataset in datasets]
        return (SourceFile(source.path, _common_rows(source.path, datasets),
                           _chunk_rows(datasets[0][1])), found)


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
        f"{path}: holds {len(names)} datasets ({nearest_first('/' + input_name, names)}); "
        f"name one as {path}:/dataset or with --map {input_name}=/dataset")


def _open_input(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5: {exc}") from exc


def _dataset(handle: h5py.File, path: str, name: str) -> h5py.Dataset:
    node = handle.get(name)
    if not isinstance(node, h5py.Dataset):
        names: list[str] = []
        handle.visititems(lambda key, obj: names.append("/" + key)
                          if isinstance(obj, h5py.Dataset) else None)
        raise InputError(f"{path}:{name}: no such dataset; the file holds "
                         f"{nearest_first(name, names)}; name the one to read as "
                         f"FILE:/DATASET or with --map INPUT=/DATASET")
    if node.ndim < 1 or node.dtype.kind not in "biuf":
        raise InputError(f"{path}:{name}: expected a numeric array with rows, "
                         f"found shape {node.shape} dtype {node.dtype}")
    return node


def _common_rows(path: str, datasets: list[tuple[str, h5py.Dataset]]) -> int:
    rows = {ds.name: ds.shape[0] for _, ds in datasets}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name} {count:,}" for name, count in rows.items())
        raise InputError(f"{path}: mapped datasets differ in row count ({counts}); map "
                         "datasets with one row per input row")
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
        if dataset.raw is None or not dataset.raw.read(view, start):
            dataset.dataset.read_direct(view, np.s_[start:stop])
        return view

    def _datasets(self, file_index: int) -> dict[str, _Input]:
        """The open file's datasets by model input (h5py lookups cost per call: kept)."""
        opened = self.open.pop(file_index, None)  # re-inserted last: most recently used
        if opened is None:
            if len(self.open) >= self.max_open:
                least_recent = next(iter(self.open))
                self.open.pop(least_recent).close()
            opened = _OpenInput.of(self.sources[file_index])
        self.open[file_index] = opened
        return opened.datasets

    def close(self) -> None:
        for opened in self.open.values():
            opened.close()
        self.open.clear()


@dataclass(frozen=True)
class _Input:
    dataset: h5py.Dataset
    dtype: np.dtype
    row_shape: tuple[int, ...]
    raw: RawRows | None  # set when the rows can be read as plain bytes


@dataclass(frozen=True)
class _OpenInput:
    handle: h5py.File
    fd: int  # the same file, for RawRows
    datasets: dict[str, _Input]

    @classmethod
    def of(cls, source: Hdf5Source) -> _OpenInput:
        handle = _open_input(source.path)
        try:
            datasets = {name: handle[path] for name, path in source.datasets}
            fd = os.open(source.path, os.O_RDONLY)
        except (KeyError, OSError):
            handle.close()
            raise
        return cls(handle, fd, {name: _Input(d, d.dtype, d.shape[1:], RawRows.of(handle, d, fd))
                                for name, d in datasets.items()})

    def close(self) -> None:
        self.handle.close()
        os.close(self.fd)


class RawRows:
    """Reads rows of an unfiltered, native-order dataset straight from the file's bytes.

    Such rows lie in the file exactly as in memory: in one block (contiguous
    layout) or in one block per chunk when a chunk spans whole rows. One
    ``preadv`` into the caller's buffer then replaces HDF5's read, which costs
    about 1.6x as much for a 4 MiB batch. A chunk never written (fill values)
    or stored filtered makes ``read`` decline, and HDF5 reads that batch.
    """

    def __init__(self, dataset: h5py.Dataset, fd: int, base: int | None) -> None:
        self.dataset, self.fd, self.base = dataset, fd, base
        self.row_nbytes = dataset.dtype.itemsize * math.prod(dataset.shape[1:])
        self.chunk_rows = dataset.chunks[0] if base is None else 0
        self.chunks: dict[int, int | None] = {}  # chunk index -> byte offset (None: decline)

    @classmethod
    def of(cls, handle: h5py.File, dataset: h5py.Dataset, fd: int) -> RawRows | None:
        """The raw reader of ``dataset``, or None when HDF5 must read it (filters,
        byte order, external or virtual storage, chunks split across columns)."""
        plist = dataset.id.get_create_plist()
        if not dataset.dtype.isnative or plist.get_nfilters() or plist.get_external_count():
            return None
        layout = plist.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            base = dataset.id.get_offset()
            return None if base is None else cls(dataset, fd, base)
        # chunk addresses left out the user block before HDF5 1.14.4: only without one
        whole_rows = dataset.chunks is not None and dataset.chunks[1:] == dataset.shape[1:]
        if layout == h5py.h5d.CHUNKED and whole_rows and handle.userblock_size == 0:
            return cls(dataset, fd, None)
        return None

    def read(self, out: np.ndarray, start: int) -> bool:
        """Fill ``out`` (C-contiguous) with the rows from ``start``; False to decline."""
        pieces = self._pieces(start, start + len(out))
        if pieces is None:
            return False
        raw = out.reshape(-1).view(np.uint8).data  # a memoryview
        for offset, first, stop in pieces:
            _pread_all(self.fd, raw[(first - start) * self.row_nbytes:
                                    (stop - start) * self.row_nbytes], offset)
        return True

    def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int]] | None:
        """(file offset, first row, stop row) of each stored block the rows lie in."""
        if self.base is not None:
            return [(self.base + start * self.row_nbytes, start, stop)]
        pieces = []
        for index in range(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1):
            address = self._chunk_address(index)
            if address is None:
                return None
            chunk_start = index * self.chunk_rows
            first, last = max(start, chunk_start), min(stop, chunk_start + self.chunk_rows)
            pieces.append((address + (first - chunk_start) * self.row_nbytes, first, last))
        return pieces

    def _chunk_address(self, index: int) -> int | None:
        if index not in self.chunks:
            coord = (index * self.chunk_rows,) + (0,) * (self.dataset.ndim - 1)
            info = self.dataset.id.get_chunk_info_by_coord(coord)
            stored = info.byte_offset is not None and info.filter_mask == 0
            self.chunks[index] = info.byte_offset if stored else None
        return self.chunks[index]


def _pread_all(fd: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if got == 0:
            raise OSError(f"file ends at byte {offset + done}, inside the dataset")
        done += got


def create(partial: Path, fields: list[Field], rows: int, attrs: dict[str, Any],
           plan_rows: np.ndarray) -> dict[str, int]:
    """Create the output file with pre-allocated contiguous datasets (rank 0 only).

    Returns each dataset's byte offset in the file, where ranks write its rows. The
    file is made under a temporary name and renamed once whole, so a full disk or a
    kill never leaves a ``.partial`` that is not a recognisable mpiscore output.
    """
    making = partial.with_name(partial.name + ".creating")
    failure = None
    with _quiet_h5py_cleanup():
        try:
            with h5py.File(making, "w") as handle:
                offsets = {field.name: _allocate(handle, field, rows) for field in fields}
                handle.attrs.update({STATUS_ATTR: "incomplete", **attrs})
                handle.create_dataset(PLAN_DATASET, data=plan_rows)
                handle[PLAN_DATASET].attrs["columns"] = "batch_id,file_index,start,stop"
            os.replace(making, partial)
        except OSError as exc:
            making.unlink(missing_ok=True)
            failure = storage_error(partial, exc, "cannot create HDF5 output", RERUN)
            exc.__traceback__ = None  # let go of h5py's objects here, inside the quiet hook
            gc.collect()  # and of those left in cycles
        except BaseException:  # a bug: no half-made file left beside the output either
            making.unlink(missing_ok=True)
            raise
    if failure is not None:
        raise failure
    return offsets


@contextlib.contextmanager
def _quiet_h5py_cleanup() -> Iterator[None]:
    """When a write fails (a full disk), h5py's objects fail again as they are freed and
    print tracebacks (Cython reports them through both hooks): the error raised says it
    once, so those are dropped (the body frees them, while the hooks are ours). Not
    collected here whatever happened: after onnxruntime and h5py loaded, a collection
    takes ~10 ms of CPU, on the job's path to its first batch (the output is created
    while the ranks wait for the job)."""
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = lambda unraisable: None
    sys.excepthook = lambda *exc_info: None
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = hooks


def _allocate(handle: h5py.File, field: Field, rows: int) -> int:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple((rows, *field.shape))
    numpy_dtype = np.dtype(field.dtype)
    if numpy_dtype.kind == "S":  # text outputs: fixed-length UTF-8, as h5py's .asstr() reads
        numpy_dtype = h5py.string_dtype("utf-8", numpy_dtype.itemsize)
    dtype = h5py.h5t.py_create(numpy_dtype, logical=True)
    dataset = h5py.h5d.create(handle.id, field.name.encode(), dtype, space, dcpl=dcpl)
    return dataset.get_offset()


def owned(path: Path) -> bool:
    """Whether ``path`` is an HDF5 output (or partial output) that mpiscore wrote: its
    root carries the status attribute, which only mpiscore sets."""
    try:
        with h5py.File(path, "r") as handle:
            return STATUS_ATTR in handle.attrs
    except OSError:
        return False


def damage(path: Path) -> str | None:
    """What makes ``path`` no complete output any more (unreadable, or not marked
    complete), in words; None if it is one."""
    try:
        with h5py.File(path, "r") as handle:
            status = handle.attrs.get(STATUS_ATTR)
    except OSError as exc:
        return f"cannot be read as HDF5 ({exc})"
    return None if status == "complete" else f"is not marked complete ({STATUS_ATTR} {status!r})"


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
    never overlap. ``sync`` flushes them to storage (fdatasync) before their
    batches are reported done, so the journal never claims rows that could be lost.
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
            column = columns[name]
            if np.dtype(field.dtype).kind == "S":
                column = _fixed_utf8(column, field, f"{self.final}:/{name} batch {batch.batch_id}")
            data = np.ascontiguousarray(checked_rows(column, field, batch,
                                                     f"{self.final}:/{name}"))
            try:
                _pwrite_all(self.fd, data,
                            self.offsets[name] + batch.global_start * field.row_nbytes)
            except OSError as exc:
                raise storage_error(self.partial, exc,
                                    f"cannot write batch {batch.batch_id}") from exc

    def sync(self) -> None:
        if self.fd >= 0:
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise storage_error(self.partial, exc, "cannot flush written rows") from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finish(self, ranks: Ranks, complete: bool) -> None:
        """After every rank is done: rank 0 marks the file complete and renames it (the
        other ranks pass the barrier without a writer: OutputTarget.finisher)."""
        ranks.barrier()
        if complete and ranks.rank == 0:
            with h5py.File(self.partial, "r+") as handle:
                handle.attrs[STATUS_ATTR] = "complete"
            os.replace(self.partial, self.final)


def _fixed_utf8(column: object, field: Field, where: str) -> np.ndarray:
    """Strings as UTF-8 bytes that fit the dataset's fixed width, which was set when the
    output was created (from the model's class labels and the probe): a longer
    value fails its batch rather than being cut short."""
    array = np.asarray(column)
    if array.dtype.kind != "S":
        array = np.char.encode(array.astype(str), "utf-8")
    width = np.dtype(field.dtype).itemsize
    if array.dtype.itemsize > width:
        longest = max(array.reshape(-1), key=len)
        raise OutputError(f"{where}: value {longest.decode(errors='replace')!r} needs "
                          f"{len(longest)} bytes, more than the {width} of this HDF5 string "
                          "dataset (sized from the model's class labels and the probe batch); "
                          "write Parquet output")
    return array


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    raw = data.reshape(-1).view(np.uint8).data  # a memoryview
    written = 0
    while written < len(raw):
        written += os.pwrite(fd, raw[written:], offset + written)
