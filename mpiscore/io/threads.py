"""Many files' metadata at once: a function mapped over paths on a thread pool, in order.

Opening and stat-ing a file costs latency, little CPU (a parallel filesystem's
metadata server answers in milliseconds), so rank 0 asks for many at a time
while planning. Results come back in the paths' order; the first failure in that
order is raised, as a loop would, naming its file as the function names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

PARALLEL_FROM = 32  # fewer items are done in a loop: a pool costs more than it saves
THREADS = 16  # requests in flight at once; the CPU work is small (or under one lock)
PER_TASK = 16  # items a thread takes at a time: one hand-over per item would cost more
# than a stat of a cached file (~3 us); a slow filesystem still has THREADS in flight


def map_in_order(function: Callable[[T], R], items: Sequence[T],
                 threads: int = THREADS) -> list[R]:
    """``[function(item) for item in items]``, up to ``threads`` at a time."""
    if len(items) < PARALLEL_FROM or threads <= 1:
        return [function(item) for item in items]
    tasks = [items[first:first + PER_TASK] for first in range(0, len(items), PER_TASK)]
    with ThreadPoolExecutor(min(threads, len(tasks)), thread_name_prefix="mpiscore-meta") as pool:
        return [result for done in pool.map(lambda task: [function(i) for i in task], tasks)
                for result in done]

