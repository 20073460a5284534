"""Cut the global row space of the input files into mini-batches.

Pure: no MPI, no ONNX, no file access. Rank 0 builds the plan from the file
descriptions a reader gives it; only the small :class:`Batch` descriptors
travel over MPI, and each rank reads its rows itself.

Batches never span files, and are aligned to alignment units (HDF5 chunks,
Parquet row groups) where that keeps sizes sensible: small units are packed
together up to the target size, and a unit larger than the target is split
into near-equal pieces. The plan depends only on the inputs and the batch
size, never on the rank count, which makes output reproducible across runs.

File input (each file one item, :func:`make_item_plan`) uses the same Batch:
there a batch is a run of consecutive files, never a part of one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import BatchSize


@dataclass(frozen=True)
class SourceFile:
    """One input file in the global row space.

    ``unit_rows`` is either one int (regular HDF5 chunks; 1 for contiguous
    data) or the sizes of consecutive units (Parquet row groups).
    """

    path: str
    rows: int
    unit_rows: int | tuple[int, ...] = 1


@dataclass(frozen=True)
class Batch:
    """A mini-batch: rows ``start:stop`` of one file, at ``global_start`` overall.

    For file input, where each file is one item (:func:`make_item_plan`), a batch
    is ``rows`` consecutive files instead: ``file_index`` is the first of them,
    ``start`` is 0 and ``stop`` their count, so it covers files
    ``file_index:file_index + rows``, and ``global_start == file_index``.
    """

    batch_id: int
    file_index: int
    start: int
    stop: int
    global_start: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def global_stop(self) -> int:
        return self.global_start + self.rows


@dataclass(frozen=True)
class Plan:
    """The files and the batches of a job, in global row order."""

    files: tuple[SourceFile, ...]
    batches: tuple[Batch, ...]
    batch_rows: int

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> dict:
        """A JSON-able description, kept in the run directory."""
        return {
            "batch_rows": self.batch_rows,
            "total_rows": self.total_rows,
            "files": [{"path": f.path, "rows": f.rows} for f in self.files],
            "batches": [[b.batch_id, b.file_index, b.start, b.stop] for b in self.batches],
        }


def make_plan(files: Sequence[SourceFile], batch_rows: int) -> Plan:
    """Cut every file into batches of about ``batch_rows`` rows, numbered in row order."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    batches: list[Batch] = []
    file_offset = 0
    for file_index, source in enumerate(files):
        for start, stop in cut_rows(source.rows, batch_rows, source.unit_rows):
            batches.append(Batch(len(batches), file_index, start, stop, file_offset + start))
        file_offset += source.rows
    return Plan(tuple(files), tuple(batches), batch_rows)


def make_item_plan(files: Sequence[SourceFile], batch_size: BatchSize, sizes: Sequence[int]
                   ) -> Plan:
    """Cut file input, each file one item, into batches of consecutive files.

    ``batch_size.rows`` counts files per batch; ``batch_size.nbytes`` packs
    consecutive files up to that many bytes by their ``sizes``, a file larger
    than that being a batch alone. ``batch_rows`` is the file count, or the
    longest batch's when packing by bytes.
    """
    if len(sizes) != len(files):
        raise ValueError("one size per file")
    if batch_size.rows is not None:
        if batch_size.rows < 1:
            raise ValueError("batch size must be positive")
        bounds = [*range(0, len(files), batch_size.rows), len(files)]
    else:
        assert batch_size.nbytes is not None
        bounds = _pack_bytes(sizes, batch_size.nbytes)
    batches = tuple(Batch(batch_id, first, 0, stop - first, first)
                    for batch_id, (first, stop) in enumerate(itertools.pairwise(bounds)))
    rows = batch_size.rows or max((b.rows for b in batches), default=1)
    return Plan(tuple(files), batches, rows)


def _pack_bytes(sizes: Sequence[int], nbytes: int) -> list[int]:
    """Indices where each batch of consecutive items starts, then the item count: a new
    batch begins where adding the next item would pass ``nbytes``."""
    bounds, packed = [0], 0
    for index, size in enumerate(sizes):
        if index > bounds[-1] and packed + size > nbytes:
            bounds.append(index)
            packed = 0
        packed += size
    return [*bounds, len(sizes)] if sizes else [0]


def cut_rows(rows: int, target: int, unit_rows: int | tuple[int, ...]) -> list[tuple[int, int]]:
    """Row ranges covering ``0:rows``, aligned to units where sensible."""
    if isinstance(unit_rows, int):
        if unit_rows <= target:
            step = target - target % max(1, unit_rows)
            return [(s, min(s + step, rows)) for s in range(0, rows, step)]
        units: Sequence[int] = _regular_units(rows, unit_rows)
    else:
        units = unit_rows
    return list(_pack_units(units, target))


def _regular_units(rows: int, unit: int) -> list[int]:
    full, rest = divmod(rows, unit)
    return [unit] * full + ([rest] if rest else [])


def _pack_units(unit_sizes: Sequence[int], target: int) -> Iterator[tuple[int, int]]:
    """Pack small units up to ``target`` rows; split large ones into equal pieces."""
    start = position = 0
    for size in unit_sizes:
        if size >= target or position + size - start > target:
            if position > start:
                yield start, position
            start = position
        if size >= target:
            yield from _split(position, size, math.ceil(size / target))
            start = position + size
        position += size
    if position > start:
        yield start, position


def _split(offset: int, size: int, pieces: int) -> Iterator[tuple[int, int]]:
    bounds = [offset + size * i // pieces for i in range(pieces + 1)]
    yield from itertools.pairwise(bounds)
