"""Which batch goes to which worker: a pure state machine, no MPI.

The coordinator drives it with :meth:`Scheduler.assign` and
:meth:`Scheduler.complete`; it knows nothing about messages, so unit tests can
step it directly. Batches are handed out in row order (pull-based, first come
first served), which keeps each rank's reads roughly sequential per file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .plan import Batch


@dataclass
class Scheduler:
    """Tracks pending, in-flight and completed batches."""

    pending: deque[Batch]
    in_flight: dict[int, int] = field(default_factory=dict)  # batch_id -> rank
    completed: set[int] = field(default_factory=set)
    total: int = 0

    @classmethod
    def for_batches(cls, batches: Iterable[Batch]) -> Scheduler:
        queue = deque(batches)
        return cls(pending=queue, total=len(queue))

    def assign(self, rank: int) -> Batch | None:
        """The next batch for ``rank``, or None when nothing is left to hand out."""
        if not self.pending:
            return None
        batch = self.pending.popleft()
        self.in_flight[batch.batch_id] = rank
        return batch

    def complete(self, batch_id: int, rank: int) -> None:
        """Record that ``rank`` finished ``batch_id`` and wrote its output."""
        owner = self.in_flight.pop(batch_id, None)
        if owner != rank:
            raise RuntimeError(
                f"batch {batch_id} reported done by rank {rank}, but was assigned to {owner}")
        self.completed.add(batch_id)

    @property
    def done(self) -> bool:
        """True once every batch has been completed."""
        return len(self.completed) == self.total
