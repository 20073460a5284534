"""Time a few real batches, read and scored in this scoring process, for a dry run.

The batches are spread over the plan (first, last and evenly between), so that
more than the first file's pages are read; the first one timed is a warm-up
(lazy allocations of the runtime, cold caches) and is left out when more
follow. Nothing is written: the job's write-behind thread overlaps writing
with scoring, so reading and scoring set its pace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..estimate import Calibration
from ..io.fields import Reader
from ..model import InputBinding
from ..plan import Batch
from .pipeline import Loaded, scorer_feeds
from .scorers import Scorer


def calibrate(reader: Reader, scorer: Scorer, bindings: tuple[InputBinding, ...], raw: bool,
              batches: Sequence[Batch], seconds: float, setup_seconds: float,
              threads: int = 1) -> Calibration:
    """Read and score batches of ``batches`` until ``seconds`` have passed (at least
    one, at most all); the rate of those after the warm-up."""
    timed: list[tuple[int, float, float]] = []  # rows, read seconds, score seconds
    spent = 0.0
    try:
        for batch in spread(batches):
            started = time.perf_counter()
            arrays, kept = reader.read(batch)
            read = time.perf_counter()
            scorer.score(scorer_feeds(Loaded(arrays, kept, read - started), bindings, raw))
            done = time.perf_counter()
            timed.append((batch.rows, read - started, done - read))
            spent += done - started
            if spent >= seconds:
                break
    finally:
        reader.close()
    kept_timed = timed[1:] if len(timed) > 1 else timed
    return Calibration(len(kept_timed), sum(t[0] for t in kept_timed),
                       sum(t[1] for t in kept_timed), sum(t[2] for t in kept_timed),
                       setup_seconds, threads)


def spread(batches: Sequence[Batch]) -> list[Batch]:
    """The batches in an order that samples the whole plan early: halving the gaps
    (first, last, middle, quarters ...), each batch once."""
    if not batches:
        return []
    order: list[int] = []
    seen: set[int] = set()
    count = 2
    while len(order) < len(batches):
        for index in np.linspace(0, len(batches) - 1, count).round().astype(int).tolist():
            if index not in seen:
                seen.add(index)
                order.append(index)
        count = 2 * count - 1
    return [batches[i] for i in order]
