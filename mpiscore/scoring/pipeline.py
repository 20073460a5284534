"""One batch through the stages in a scoring process: read, score, write; each timed."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputChanged, InputError, MpiscoreError
from ..io.fields import LINES, ROW_STATUS, Columns, Field, Reader, Writer
from ..journal import changed_input
from ..model import InputBinding
from ..plan import Batch, SourceFile
from ..wire import StageTimes
from .scorers import Scorer


@dataclass(frozen=True)
class Loaded:
    """A batch's model inputs and carried columns as read, and how long reading took."""

    arrays: dict[str, np.ndarray]
    kept: Columns
    read: float


@dataclass(frozen=True)
class Prepared:
    """A scored batch waiting to be written, how long reading and scoring took, and how
    many of its items got no result (a script's run() may return fewer lines)."""

    columns: dict[str, object]
    read: float
    score: float
    failed_items: int = 0


class BatchProcessor:
    """Reads, scores and writes a batch, each a step of its own so that they can overlap
    for consecutive batches; names the batch and rank when one fails. The scorer is
    any kind (scorers/); its inputs are fitted to ``bindings`` first.

    ``readers`` take turns (reader ``slot``): a reader may reuse its buffers at
    its next read, so with two, one batch can be read while the previous one is
    scored.
    """

    def __init__(self, readers: Sequence[Reader], scorer: Scorer,
                 bindings: tuple[InputBinding, ...], writer: Writer,
                 outputs: tuple[Field, ...], output_sources: tuple[str, ...], where: str,
                 on_nan: str = "error", files: Sequence[SourceFile] | None = None,
                 raw: bool = False) -> None:
        """``files``: the plan's stamped file table; an input file is checked against its
        stamp each time reading moves on to it. ``raw``: the scorer (an entry script) takes the
        columns as read, not bound model inputs."""
        self.readers, self.scorer, self.writer = readers, scorer, writer
        self.bindings, self.raw = bindings, raw
        self.files, self.file_index = files, -1
        self.renames = [(f.name, source) for f, source in zip(outputs, output_sources,
                                                               strict=True)]
        self.where, self.on_nan = where, on_nan

    def read(self, batch: Batch, slot: int = 0) -> Loaded:
        """Read a batch with reader ``slot``, refusing non-finite input unless allowed; its
        arrays stay valid until that reader reads again."""
        with self._naming(batch):
            started = time.perf_counter()
            self._check_file(batch.file_index)
            arrays, kept = self.readers[slot].read(batch)
            if self.on_nan == "error":
                _refuse_non_finite(arrays, batch.global_start)
            return Loaded(arrays, kept, time.perf_counter() - started)

    def score(self, batch: Batch, loaded: Loaded) -> Prepared:
        """Score a read batch: the output columns, ready to write."""
        with self._naming(batch):
            started = time.perf_counter()
            outputs = self.scorer.score(scorer_feeds(loaded, self.bindings, self.raw))
            if LINES in outputs:  # append_row: the lines are the output, short or not
                return Prepared(outputs, loaded.read, time.perf_counter() - started,
                                batch.rows - len(outputs[LINES]))
            status = {ROW_STATUS.name: np.zeros(batch.rows, dtype=np.uint8)}
            columns = {**loaded.kept, **{n: outputs[s] for n, s in self.renames}, **status}
            return Prepared(columns, loaded.read, time.perf_counter() - started)

    def write(self, batch: Batch, prepared: Prepared) -> StageTimes:
        """Write a prepared batch in place (durable only after :meth:`sync`); its times in
        each stage."""
        with self._naming(batch):
            started = time.perf_counter()
            self.writer.write(batch, prepared.columns)
            return StageTimes(prepared.read, prepared.score, time.perf_counter() - started)

    def sync(self) -> float:
        """Make every batch written so far durable; the seconds it took."""
        started = time.perf_counter()
        try:
            self.writer.sync()
        except MpiscoreError as exc:
            raise type(exc)(f"on {self.where}: {exc}") from exc
        return time.perf_counter() - started

    def _check_file(self, file_index: int) -> None:
        """Refuse to read on from an input file modified since the job began (one stat
        when reading moves to another file; the coordinator checks all at the end)."""
        if self.files is None or file_index == self.file_index:
            return
        change = changed_input(self.files, file_index)
        if change:
            raise InputChanged(change)
        self.file_index = file_index

    @contextmanager
    def _naming(self, batch: Batch) -> Iterator[None]:
        try:
            yield
        except MpiscoreError as exc:
            named = type(exc)(f"batch {batch.batch_id} (rows {batch.global_start}-"
                              f"{batch.global_stop - 1}) on {self.where}: {exc}")
            named.__dict__.update(exc.__dict__)  # what it carries (a script's traceback)
            raise named from exc

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        self.writer.close()
        self.scorer.close()


def scorer_feeds(loaded: Loaded, bindings: tuple[InputBinding, ...], raw: bool
                 ) -> dict[str, Any]:
    """What the scorer gets of a read batch: the model inputs fitted to their bindings,
    or, for an entry script (``raw``), every column as read (carried ones too)."""
    return {**loaded.arrays, **loaded.kept} if raw else bound(loaded.arrays, bindings)


def bound(arrays: dict[str, np.ndarray], bindings: tuple[InputBinding, ...]
          ) -> dict[str, np.ndarray]:
    """A batch's arrays as the scorer's inputs: per-row shape and dtype as bound."""
    return {binding.name: _fit(arrays[binding.name], binding) for binding in bindings}


def _fit(array: np.ndarray, binding: InputBinding) -> np.ndarray:
    array = array.reshape((len(array), *binding.row_shape))
    return np.ascontiguousarray(array, dtype=binding.dtype)


def _refuse_non_finite(arrays: dict[str, np.ndarray], first_row: int = 0) -> None:
    """``--on-nan error``: NaN or inf in float input fails the batch, naming the rows (a
    null inside a Parquet list column reads as NaN). ``first_row``: the batch's first
    row in the input's global row order."""
    for name, array in arrays.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        if np.isfinite(array.min()) and np.isfinite(array.max()):  # NaN/inf propagate: fast path
            continue
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InputError(f"input {name!r}: {len(rows)} rows with NaN, inf or null values "
                             f"(first at input row {first_row + rows[0]}, row {rows[0]} of the "
                             "batch); pass --on-nan pass to score them anyway")
