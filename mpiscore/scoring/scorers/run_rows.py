"""How many rows of a batch an ONNX session is given per run: a batch runs in slices
whose intermediate tensors stay in the core's cache.

A mini-batch is the unit of reading, scheduling and writing, sized for I/O
(16,384 rows, 4 MiB); a session run over all of it makes every intermediate
tensor that many rows long. A hidden layer of 1,024 floats is then 64 MB,
written to memory and read back at every layer, where a slice of 256 rows
(1 MB) stays in a 2 MB L2. Measured here, one single-threaded session:
64-1024-1024-16 MLP 282 ms a 16,384-row batch run whole, 179 ms in slices
of 256; 64-256-256-16, 18.8 ms and 16.4 ms in slices of 1,024 (two such
processes side by side: 272 vs 198 ms, 20.5 vs 16.1 ms; benchmarks/run_rows.py).
A model with little work per row loses instead: each run costs tens of
microseconds of its own.

So each scoring process measures (:class:`RunRows`): after a first batch run
whole (allocations, cold caches), one batch whole, then one in slices of each
of ``CANDIDATES``, smallest last, while the slices are not clearly slower than
the best so far; it keeps the fastest per row, the larger of sizes within
``MARGIN`` of each other. A row-wise model (each output row depends on its
input row alone, as mpiscore's output layout assumes) gives the same rows
either way; the standard operators' kernels (MLAS's matrix products) are
bitwise equal at any slice size. ai.onnx.ml operators are not (a
LinearClassifier's scores moved by 2 ulp at 1,024-row slices), so onnx.py
gives such graphs whole batches unless ``--run-rows`` says otherwise.
Pure: no onnxruntime here, so it is tested without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Slice sizes tried, in rows: large enough that a run's own cost (~20-50 us) is small
# beside its work, small enough that a wide layer's tensors fit an L2 (1-2 MB a core).
CANDIDATES = (4096, 1024, 256)

# Sizes whose time per row is within this share of the fastest count as equal (the
# larger wins: fewer runs); a slice size more than twice this slower than the best
# ends the search (smaller ones only run more often).
MARGIN = 0.05

WHOLE = 0  # a batch run whole: no slicing


class RunRows:
    """The rows per session run for each batch of one scoring process, fixed or
    measured on its first batches (one size a batch, see the module docstring).

    ``fixed``: a size the user chose (``--run-rows``), or None to measure.
    ``clock``: CPU time of the calling thread for a one-thread session (its work
    runs there, and time the process waits for a core is left out), else wall time.
    """

    def __init__(self, fixed: int | None, clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self.clock = clock
        self.chosen: int | None = fixed  # None while measuring
        self.warmed = False
        self.tried: dict[int, float] = {}  # size (WHOLE: the batch) -> seconds a row
        self.trying = WHOLE

    def size(self, rows: int) -> int:
        """How many rows of a ``rows``-row batch to give each run (``rows``: whole)."""
        size = self.trying if self.chosen is None else self.chosen
        return rows if size == WHOLE or size >= rows else size

    def timed(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` took ``seconds`` to score at :meth:`size`'s slices."""
        if self.chosen is not None or rows <= CANDIDATES[-1] or rows <= self.trying:
            return  # too few rows to tell the sizes apart, or the size was not run
        if not self.warmed:
            self.warmed = True
            return
        self.tried[self.trying] = seconds / rows
        best = min(self.tried.values())
        smaller = [c for c in CANDIDATES if c < rows and c not in self.tried
                   and (self.trying == WHOLE or c < self.trying)]
        if not smaller or self.tried[self.trying] > best * (1 + 2 * MARGIN):
            self.chosen = self._fastest(best)
        else:
            self.trying = smaller[0]

    @property
    def measuring(self) -> bool:
        return self.chosen is None

    def _fastest(self, best: float) -> int:
        """The largest size tried within MARGIN of the fastest (WHOLE counts largest)."""
        near = [size for size, per_row in self.tried.items() if per_row <= best * (1 + MARGIN)]
        return WHOLE if WHOLE in near else max(near)
