"""``--progress-timeout``: a job in which no batch completes for so long stops, resumably.

A batch that hangs without a ``--batch-timeout`` (a filesystem that stopped
answering, a deadlocked library), or ranks that all wait on something, would
otherwise hold the allocation until its walltime. Rank 0 checks between
messages; when no batch has completed anywhere for the timeout, it stops the
job as SIGTERM does (drain, ``--stop-grace``, exit 75, ``--resume`` later) and
says which ranks held which batches, and for how long.
"""

from __future__ import annotations

import time

from ..schedule import Scheduler

CHECK_SECONDS = 1.0  # how often rank 0 looks, at most: not on every message of its loop


class Watchdog:
    """Rank 0's watch on progress; off (never fires) when ``seconds`` is None."""

    def __init__(self, scheduler: Scheduler, seconds: float | None) -> None:
        self.scheduler, self.seconds = scheduler, seconds
        self.last_progress = self.checked = time.monotonic()
        self.seen: dict[int, float] = {}  # batch in flight -> when it was first seen so

    def completed(self) -> None:
        self.last_progress = time.monotonic()

    def check(self) -> str | None:
        """The reason to stop, once no batch has completed for ``seconds``; else None."""
        if self.seconds is None or self.scheduler.stop_reason is not None:
            return None
        now = time.monotonic()
        if now - self.checked < min(CHECK_SECONDS, self.seconds / 4):
            return None
        self.checked = now
        flying = self.scheduler.in_flight
        self.seen = {batch_id: self.seen.get(batch_id, now) for batch_id in flying}
        if now - self.last_progress < self.seconds:
            return None
        held = [f"rank {rank}: batch {batch_id} for {now - self.seen[batch_id]:.0f}s"
                for batch_id, (_, rank) in sorted(flying.items(), key=lambda i: i[1][1])]
        shown = "; ".join(held[:8]) + (f"; ... and {len(held) - 8} more" if len(held) > 8 else "")
        return (f"no batch completed for {now - self.last_progress:.0f}s "
                f"(--progress-timeout {self.seconds:g}); in flight: {shown or 'none'}")
