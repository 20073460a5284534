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

So each scoring process measures (:class:`RunRows`), one size a batch, from
1,024 rows down, then up to whole batches while no slower; it keeps the
fastest per row, the larger of sizes within ``MARGIN`` of each other. A
row-wise model (each output row depends on its input row alone, as
mpiscore's output layout assumes) gives the same rows either way; the
standard operators' kernels (MLAS's matrix products) are bitwise equal at
any slice size. ai.onnx.ml operators are not (a LinearClassifier's scores
moved by 2 ulp at 1,024-row slices), so onnx.py gives such graphs whole
batches unless ``--run-rows`` says otherwise.
Pure: no onnxruntime here, so it is tested without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Slice sizes tried, in rows, smallest first (then whole batches): large enough that a
# run's own cost (~20-50 us) is small beside its work, small enough that a wide layer's
# tensors fit an L2 (1-2 MB a core). The search starts at START, the best or within 10%
# of it for the MLPs measured, so that few batches run at a poor size.
CANDIDATES = (256, 1024, 4096)
START = 1024

# Sizes whose time per row is within this share of the fastest count as equal (the
# larger wins: fewer runs); the search goes on to larger sizes while they are equal
# or faster.
MARGIN = 0.05

WHOLE = 0  # a batch run whole: no slicing


class RunRows:
    """The rows per session run for each batch of one scoring process, fixed or
    measured on its first batches (one size a batch, see the module docstring).

    Measuring climbs the ladder of sizes below the batch's rows, then whole
    batches: START first (after a first batch at START, not timed: allocations,
    cold caches), then the size below; while a smaller size is faster by more
    than MARGIN it goes down, else up while the larger is no slower than the
    best by more than MARGIN. The heavy MLP settles in three batches (1,024,
    256: kept), the light one in four (1,024, 256, 4,096: 1,024 kept).

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
        self.trying = START
        self.ladder: list[int] = []  # the sizes below the first timed batch's rows, WHOLE
        self.going_down = True

    def size(self, rows: int) -> int:
        """How many rows of a ``rows``-row batch to give each run (``rows``: whole)."""
        size = self.trying if self.chosen is None else self.chosen
        return rows if size == WHOLE or size >= rows else size

    def timed(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` took ``seconds`` to score at :meth:`size`'s slices."""
        if self.chosen is not None or rows <= CANDIDATES[0]:
            return  # too few rows to tell the sizes apart
        if not self.ladder:
            self.ladder = [size for size in CANDIDATES if size < rows] + [WHOLE]
            if self.trying not in self.ladder:
                self.trying = self.ladder[-2] if len(self.ladder) > 1 else WHOLE
        if self.trying != WHOLE and rows <= self.trying:
            return  # this batch ran whole, not at the size being tried
        if not self.warmed:
            self.warmed = True
            return
        self.tried[self.trying] = seconds / rows
        following = self._following()
        if following is None:
            self.chosen = self._fastest()
        else:
            self.trying = following

    @property
    def measuring(self) -> bool:
        return self.chosen is None

    def _following(self) -> int | None:
        """The size to try next, or None when the search is over."""
        ladder, tried = self.ladder, self.tried
        at = ladder.index(self.trying)
        if self.going_down:  # from a slice size, never WHOLE: there is a size above
            above = ladder[at + 1]
            first = above not in tried  # the start's own measurement
            if first or tried[self.trying] * (1 + MARGIN) < tried[above]:
                if at > 0:
                    return ladder[at - 1]
                if not first:
                    return None  # the smallest, and faster still
            self.going_down = False
            at = max(ladder.index(size) for size in tried)  # up from the largest tried
        elif tried[self.trying] > min(tried.values()) * (1 + MARGIN):
            return None  # larger was slower
        return ladder[at + 1] if at + 1 < len(ladder) else None

    def _fastest(self) -> int:
        """The largest size tried within MARGIN of the fastest (WHOLE counts largest)."""
        best = min(self.tried.values())
        near = [size for size, per_row in self.tried.items() if per_row <= best * (1 + MARGIN)]
        return WHOLE if WHOLE in near else max(near)
