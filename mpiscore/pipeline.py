"""One batch through the stages in a scoring process: read -> score, then write; timed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import InputError, MpiscoreError
from .io.fields import ROW_STATUS, Field, Reader, Writer
from .plan import Batch
from .pool import StageTimes
from .score import Scorer


@dataclass(frozen=True)
class Prepared:
    """A scored batch waiting to be written, and how long reading and scoring took."""

    columns: dict[str, object]
    read: float
    score: float


class BatchProcessor:
    """Reads and scores a batch, then writes it (two steps, so writing can overlap the
    next batch); names the batch and rank when either fails."""

    def __init__(self, reader: Reader, scorer: Scorer, writer: Writer,
                 outputs: tuple[Field, ...], output_sources: tuple[str, ...], where: str,
                 on_nan: str = "error") -> None:
        self.reader, self.scorer, self.writer = reader, scorer, writer
        self.renames = [(f.name, source) for f, source in zip(outputs, output_sources,
                                                               strict=True)]
        self.where, self.on_nan = where, on_nan

    def prepare(self, batch: Batch) -> Prepared:
        """Read and score a batch: the output columns, ready to write."""
        with self._naming(batch):
            started = time.perf_counter()
            arrays, kept = self.reader.read(batch)
            if self.on_nan == "error":
                _refuse_non_finite(arrays)
            read = time.perf_counter()
            outputs = self.scorer.score(arrays)
            status = {ROW_STATUS.name: np.zeros(batch.rows, dtype=np.uint8)}
            columns = {**kept, **{n: outputs[s] for n, s in self.renames}, **status}
            return Prepared(columns, read - started, time.perf_counter() - read)

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

    @contextmanager
    def _naming(self, batch: Batch) -> Iterator[None]:
        try:
            yield
        except MpiscoreError as exc:
            raise type(exc)(f"batch {batch.batch_id} (rows {batch.global_start}-"
                            f"{batch.global_stop - 1}) on {self.where}: {exc}") from exc

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _refuse_non_finite(arrays: dict[str, np.ndarray]) -> None:
    """``--on-nan error``: NaN or inf in float input fails the batch, naming the rows."""
    for name, array in arrays.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        if np.isfinite(array.min()) and np.isfinite(array.max()):  # NaN/inf propagate: fast path
            continue
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InputError(f"input {name!r}: {len(rows)} rows with NaN or inf (first at "
                             f"batch row {rows[0]}); pass --on-nan pass to score them anyway")
