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
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

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
    # the file's stamp as planned (journal.stamped): what the fingerprint records and a
    # scoring process checks before reading on from it; -1 until stamped
    size: int = -1
    mtime_ns: int = -1

    def __reduce__(self) -> tuple[type[SourceFile], tuple[Any, ...]]:
        """Pickled as its five values, without the field names a dataclass's state
        carries: a fifth fewer bytes in the file table sent to every process."""
        return SourceFile, (self.path, self.rows, self.unit_rows, self.size, self.mtime_ns)


@dataclass(frozen=True, slots=True)  # slots: 72 bytes, not 350 (a scheduler holds many)
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

    def __reduce__(self) -> tuple[Callable[..., Batch], tuple[int, int, int, int, int]]:
        """Pickled as its five ints, made again by :func:`_make_batch`: a slotted
        dataclass's own pickling looks its fields up (``dataclasses.fields``) for every
        Batch of every Assign, Score and Completed, and undoing it calls
        ``__setstate__``: 2.6 us a batch there and back, under 1 us so."""
        return _make_batch, (self.batch_id, self.file_index, self.start, self.stop,
                             self.global_start)


# Each field's slot setter: a Batch made with them takes half the time of the frozen
# dataclass's __init__ (five object.__setattr__ calls), and rank 0 makes one for every
# batch it hands out (BatchTable.getter).
_SETTERS = tuple(Batch.__dict__[name].__set__ for name in (
    "batch_id", "file_index", "start", "stop", "global_start"))


def _make_batch(batch_id: int, file_index: int, start: int, stop: int, global_start: int,
                new: Callable[[type[Batch]], Batch] = object.__new__,
                setters: tuple[Callable[[Batch, int], None], ...] = _SETTERS) -> Batch:
    batch = new(Batch)
    set_id, set_file, set_start, set_stop, set_global = setters
    set_id(batch, batch_id)
    set_file(batch, file_index)
    set_start(batch, start)
    set_stop(batch, stop)
    set_global(batch, global_start)
    return batch


# A table whose runs average fewer batches than this (once it has more than RUNS_KEPT)
# lists its batches instead: a run costs 56 bytes, and reading it Python's time per
# run (~3 us), where a listed batch costs 32 bytes and is read in C with the others.
SHORT_RUN = 8
RUNS_KEPT = 64


class BatchTable(Sequence[Batch]):
    """A plan's batches as runs: a file cut every ``step`` rows is one run of equal
    batches (its last may be shorter), seven int64 in all, so rank 0 holds a plan
    of a million batches over a few files in a few hundred bytes, not 32 a batch,
    and the preparing process sends it as much. A batch that does not continue
    the run before it starts one. Where runs prove short (file input's batches of
    files, many small files, uneven row groups: SHORT_RUN), the table lists its
    batches instead (``listed``, four int64 columns). Each Batch is made when asked
    for. Batch ids are the positions, 0 to n-1."""

    def __init__(self, columns: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """``columns``: (file_index, start, stop, global_start) of each batch, in order."""
        # per run: its first batch's id, file and start in the file, the rows of each batch
        # but the last, how many, the last one's rows, and global_start - start
        self.first, self.file_index, self.start, self.step = (
            array("q"), array("q"), array("q"), array("q"))
        self.length, self.last, self.offset = array("q"), array("q"), array("q")
        self.total = 0
        self.listed: _Listed | None = None  # the batches listed, once runs prove short
        for file_index, start, stop, global_start in columns:
            self.append(file_index, start, stop, global_start)

    def append(self, file_index: int, start: int, stop: int, global_start: int) -> None:
        rows = stop - start
        if self.listed is not None:
            self.listed.append(file_index, start, stop, global_start)
        elif self.total and file_index == self.file_index[-1] and \
                self.last[-1] == self.step[-1] >= rows and \
                start == self.start[-1] + self.length[-1] * self.step[-1] and \
                global_start - start == self.offset[-1]:  # the run's next batch
            self.length[-1] += 1
            self.last[-1] = rows
        elif self._runs_prove_short():
            self._list().append(file_index, start, stop, global_start)
        else:
            for column, value in zip(self._runs, (self.total, file_index, start, rows, 1, rows,
                                                  global_start - start), strict=True):
                column.append(value)
        self.total += 1

    def _runs_prove_short(self) -> bool:
        return len(self.first) >= RUNS_KEPT and self.total < SHORT_RUN * len(self.first)

    def _list(self) -> _Listed:
        """From runs to a list of batches (the runs proved short)."""
        listed = _Listed()
        for _, files, starts, stops, global_starts in self._spans(0, None):
            listed.extend(files, starts, stops, global_starts)
        self.listed = listed
        for column in self._runs:
            del column[:]
        return listed

    @property
    def _runs(self) -> tuple[array[int], ...]:
        return (self.first, self.file_index, self.start, self.step, self.length, self.last,
                self.offset)

    def add_file(self, file_index: int, ranges: Sequence[tuple[int, int]], offset: int) -> None:
        """The batches of one file: its row ``ranges``, the file starting at global ``offset``."""
        for start, stop in ranges:
            self.append(file_index, start, stop, offset + start)

    def add_run(self, file_index: int, rows: int, step: int, offset: int) -> None:
        """The batches of one file cut every ``step`` rows, in one run (no batch made)."""
        if rows <= 0:
            return
        if self.listed is not None or self._runs_prove_short():  # one by one, as listed
            self.add_file(file_index, cut_rows(rows, step, 1), offset)
            return
        count = -(-rows // step)
        for column, value in zip(self._runs, (self.total, file_index, 0, step, count,
                                              rows - (count - 1) * step, offset), strict=True):
            column.append(value)
        self.total += count

    def __len__(self) -> int:
        return self.total

    @overload
    def __getitem__(self, index: int) -> Batch: ...

    @overload
    def __getitem__(self, index: slice) -> list[Batch]: ...

    def __getitem__(self, index: int | slice) -> Batch | list[Batch]:
        if isinstance(index, slice):
            first, stop, step = index.indices(len(self))
            if step == 1:
                return self.take(first, stop)
            return [self[i] for i in range(first, stop, step)]
        if index < 0:
            index += len(self)
        return self.batch(index)

    def batch(self, batch_id: int) -> Batch:
        """Batch ``batch_id`` (0 to n-1, no negative or slice indexing)."""
        if not 0 <= batch_id < self.total:
            raise IndexError(f"batch {batch_id} of {self.total}")
        if self.listed is not None:
            return self.listed.batch(batch_id)
        run = bisect_right(self.first, batch_id) - 1
        k = batch_id - self.first[run]
        start = self.start[run] + k * self.step[run]
        rows = self.last[run] if k == self.length[run] - 1 else self.step[run]
        return _make_batch(batch_id, self.file_index[run], start, start + rows,
                           self.offset[run] + start)

    def take(self, first: int, stop: int) -> list[Batch]:
        """Batches ``first:stop``, made together: each field is set for all of them in one
        pass that runs in C, the fastest way to make many (rank 0's scheduler makes
        every batch it hands out, a few dozen at a time)."""
        if self.listed is not None:
            return self.listed.take(first, min(stop, self.total))
        made: list[Batch] = []
        for columns in self._spans(first, stop):
            batches = list(map(object.__new__, itertools.repeat(Batch, len(columns[0]))))
            for setter, column in zip(_SETTERS, columns, strict=True):
                deque(map(setter, batches, column), maxlen=0)
            made += batches
        return made

    def columns(self) -> tuple[array[int], ...]:
        """The batch_id, file_index, start and stop of every batch, one array each (the
        HDF5 output's plan dataset)."""
        if self.listed is not None:
            return self.listed.columns()
        made = tuple(array("q") for _ in range(4))
        for columns in self._spans(0, None):
            for column, part in zip(made, columns, strict=False):
                column.extend(part)
        return made

    def _spans(self, first: int, stop: int | None) -> Iterator[tuple[Sequence[int], ...]]:
        """The five columns of batches ``first:stop``, run by run, as ranges (made in C)."""
        stop = self.total if stop is None else min(stop, self.total)
        run = max(0, bisect_right(self.first, first) - 1)
        while first < stop:
            run_first, length, step = self.first[run], self.length[run], self.step[run]
            k, k_stop = first - run_first, min(length, stop - run_first)
            start = self.start[run] + k * step
            starts = range(start, start + (k_stop - k) * step, step) if step else \
                [start] * (k_stop - k)
            stops: Sequence[int] = range(start + step, starts[-1] + 2 * step, step) \
                if step else starts
            if k_stop == length and self.last[run] != step:  # the run's last batch, shorter
                stops = [*stops[:-1], starts[-1] + self.last[run]]
            offset = self.offset[run]
            yield (range(first, run_first + k_stop), [self.file_index[run]] * (k_stop - k),
                   starts, stops, range(offset + start, offset + starts[-1] + 1, step or 1)
                   if step else [offset + start] * (k_stop - k))
            first, run = run_first + k_stop, run + 1

    def rows_between(self, first: int = 0, stop: int | None = None) -> int:
        """Rows of batches ``first:stop``, counted run by run (no Batch made)."""
        stop = self.total if stop is None else min(stop, self.total)
        if self.listed is not None:
            return self.listed.rows_between(first, stop)
        rows, run = 0, max(0, bisect_right(self.first, first) - 1)
        while first < stop:
            run_first, count = self.first[run], self.length[run]
            k, k_stop = first - run_first, min(count, stop - run_first)
            last = k_stop == count
            rows += (k_stop - k - last) * self.step[run] + last * self.last[run]
            first, run = run_first + k_stop, run + 1
        return rows

    def __iter__(self) -> Iterator[Batch]:
        for first in range(0, len(self), 4096):  # a few at a time: never all made at once
            yield from self.take(first, first + 4096)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BatchTable):
            return self.rows_json() == other.rows_json()
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable while built

    def rows_json(self, first: int = 0, stop: int | None = None) -> list[list[int]]:
        """[[batch_id, file_index, start, stop], ...] of batches ``first:stop``: plan.json's
        and the fingerprint's form."""
        if self.listed is not None:
            return self.listed.rows_json(first, self.total if stop is None else stop)
        rows: list[list[int]] = []
        for ids, files, starts, stops, _ in self._spans(first, stop):
            rows += map(list, zip(ids, files, starts, stops, strict=True))
        return rows


class _Listed:
    """A table's batches one by one: four int64 columns, 32 bytes a batch (BatchTable,
    where its runs prove short)."""

    def __init__(self) -> None:
        self.file_index, self.start, self.stop, self.global_start = (
            array("q"), array("q"), array("q"), array("q"))

    def append(self, file_index: int, start: int, stop: int, global_start: int) -> None:
        self.file_index.append(file_index)
        self.start.append(start)
        self.stop.append(stop)
        self.global_start.append(global_start)

    def extend(self, *columns: Iterable[int]) -> None:
        for column, values in zip(self._columns, columns, strict=True):
            column.extend(values)

    @property
    def _columns(self) -> tuple[array[int], ...]:
        return self.file_index, self.start, self.stop, self.global_start

    def batch(self, batch_id: int) -> Batch:
        return _make_batch(batch_id, self.file_index[batch_id], self.start[batch_id],
                           self.stop[batch_id], self.global_start[batch_id])

    def take(self, first: int, stop: int) -> list[Batch]:
        made = list(map(object.__new__, itertools.repeat(Batch, max(0, stop - first))))
        for setter, column in zip(_SETTERS, (range(first, stop), *(
                column[first:stop] for column in self._columns)), strict=True):
            deque(map(setter, made, column), maxlen=0)
        return made

    def columns(self) -> tuple[array[int], ...]:
        return array("q", range(len(self.start))), self.file_index, self.start, self.stop

    def rows_between(self, first: int, stop: int) -> int:
        return sum(self.stop[first:stop]) - sum(self.start[first:stop])

    def rows_json(self, first: int, stop: int) -> list[list[int]]:
        return list(map(list, zip(range(first, min(stop, len(self.start))),
                                  self.file_index[first:stop], self.start[first:stop],
                                  self.stop[first:stop], strict=True)))


class BatchesWithheld(Sequence[Batch]):
    """Where the batches of a plan are on every process but rank 0's: their count
    only. Ranks and scoring processes are sent their batches one by one (Assign,
    Score); reaching for one here is a bug, and raises."""

    def __init__(self, count: int) -> None:
        self.total = count

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: object) -> Batch:  # type: ignore[override]
        raise PlanWithheld(f"batch {index}: this process holds the plan's file table only "
                           f"({self.total:,} batches, sent one by one as assigned)")

    def __iter__(self) -> Iterator[Batch]:
        raise PlanWithheld(f"this process holds the plan's file table only ({self.total:,} "
                           "batches, sent one by one as assigned)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchesWithheld) and other.total == self.total

    __hash__ = None  # type: ignore[assignment]


class PlanWithheld(RuntimeError):
    """A process that holds a plan without its batches reached for one (a bug)."""


@dataclass(frozen=True)
class Plan:
    """The files and the batches of a job, in global row order.

    Rank 0 holds it whole; every other rank, and every scoring process, holds
    :meth:`shared`: the file table and the batch count, without the batches.
    """

    files: tuple[SourceFile, ...]
    batches: Sequence[Batch]  # a BatchTable, a tuple (tests, partitions), or withheld
    batch_rows: int

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def batch_count(self) -> int:
        return len(self.batches)

    @property
    def holds_batches(self) -> bool:
        """False for :meth:`shared`'s plan: the batches are rank 0's."""
        return not isinstance(self.batches, BatchesWithheld)

    def shared(self) -> Plan:
        """The plan as ranks and scoring processes get it: files and count, no batches."""
        return Plan(self.files, BatchesWithheld(self.batch_count), self.batch_rows)

    def batch_rows_json(self, first: int = 0, stop: int | None = None) -> list[list[int]]:
        """[[batch_id, file_index, start, stop], ...] of batches ``first:stop`` (rank 0)."""
        if isinstance(self.batches, BatchTable):
            return self.batches.rows_json(first, stop)
        return [[b.batch_id, b.file_index, b.start, b.stop]
                for b in self.batches[first:stop]]

    def to_json(self) -> dict:
        """A JSON-able description, kept in the run directory (rank_dir.py streams it)."""
        return {**self.head_json(), "batches": self.batch_rows_json()}

    def head_json(self) -> dict:
        """:meth:`to_json` without its batches."""
        return {"batch_rows": self.batch_rows, "total_rows": self.total_rows,
                "files": [{"path": f.path, "rows": f.rows} for f in self.files]}


def make_plan(files: Sequence[SourceFile], batch_rows: int) -> Plan:
    """Cut every file into batches of about ``batch_rows`` rows, numbered in row order."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    batches = BatchTable()
    file_offset = 0
    for file_index, source in enumerate(files):
        step = _regular_step(batch_rows, source.unit_rows)
        if step is None:
            batches.add_file(file_index, cut_rows(source.rows, batch_rows, source.unit_rows),
                             file_offset)
        else:
            batches.add_run(file_index, source.rows, step, file_offset)
        file_offset += source.rows
    return Plan(tuple(files), batches, batch_rows)


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
    batches = BatchTable((first, 0, stop - first, first)
                         for first, stop in itertools.pairwise(bounds))
    rows = batch_size.rows or max((stop - first for first, stop in itertools.pairwise(bounds)),
                                  default=1)
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
    step = _regular_step(target, unit_rows)
    if step is not None:
        return [(s, min(s + step, rows)) for s in range(0, rows, step)]
    units = _regular_units(rows, unit_rows) if isinstance(unit_rows, int) else unit_rows
    return list(_pack_units(units, target))


def _regular_step(target: int, unit_rows: int | tuple[int, ...]) -> int | None:
    """The rows of every batch but the last, where a file is cut at equal steps: units
    (chunks, row groups) of one size no larger than ``target``, whole ones to a batch."""
    if isinstance(unit_rows, int) and unit_rows <= target:
        return target - target % max(1, unit_rows)
    return None


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
