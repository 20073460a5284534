"""One batch through the stages on a worker: read -> score -> write, timed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import MpiscoreError
from .io.fields import Field, Reader, Writer
from .plan import Batch
from .score import Scorer


@dataclass
class StageTimes:
    """Seconds a worker spent in each stage, and when it finished its first batch."""

    read: float = 0.0
    score: float = 0.0
    write: float = 0.0
    first_batch_done: float | None = None


class BatchProcessor:
    """Reads, scores and writes one batch; names the batch and rank when that fails."""

    def __init__(self, reader: Reader, scorer: Scorer, writer: Writer,
                 outputs: tuple[Field, ...], output_sources: tuple[str, ...], where: str) -> None:
        self.reader, self.scorer, self.writer = reader, scorer, writer
        self.renames = [(f.name, source) for f, source in zip(outputs, output_sources,
                                                               strict=True)]
        self.where = where
        self.times = StageTimes()

    def __call__(self, batch: Batch) -> int:
        try:
            self._process(batch)
        except MpiscoreError as exc:
            raise type(exc)(f"batch {batch.batch_id} (rows {batch.global_start}-"
                            f"{batch.global_stop - 1}) on {self.where}: {exc}") from exc
        if self.times.first_batch_done is None:
            self.times.first_batch_done = time.perf_counter()
        return batch.rows

    def _process(self, batch: Batch) -> None:
        started = time.perf_counter()
        arrays, kept = self.reader.read(batch)
        read = time.perf_counter()
        outputs = self.scorer.score(arrays)
        scored = time.perf_counter()
        self.writer.write(batch, {**kept, **{name: outputs[src] for name, src in self.renames}})
        self.times.read += read - started
        self.times.score += scored - read
        self.times.write += time.perf_counter() - scored
