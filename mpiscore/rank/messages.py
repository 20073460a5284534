"""The messages between the coordinator (rank 0) and the workers (every rank), over MPI.

Protocol, all messages small and typed; bulk data never travels here:

    worker                             coordinator
      Request(count=window)     --->     hand out up to `count` batches
      (sent while the rank's scoring
      processes still start; on
      rank 0, once they are ready)
                                <---     Assign(batches, attempts)  (one bundle)
      (its scoring processes read, score, write)
      Completed(batch_ids)      --->     journal them, hand out as many more (one message
                                          for every batch a wake-up of the rank ended)
      Failed(batch_id, error)   --->     retry elsewhere or give up (error budget); or,
                                          when fatal (storage full, input changed), hand
                                          it back and stop the job with that error
      StopRequested(reason)     --->     (SIGTERM/SIGINT on that rank) stop handing out
                                <---     Drain()  when stopping: hand back what has not started
      Returned(batch_ids)       --->     back to the queue, for --resume
                                <---     Stop()   nothing in flight any more: leave the loop
      Finished()                --->     (rank 0 waits for every rank's Finished, so no
                                          message is left unreceived at MPI_Finalize)

A worker keeps ``window`` batches assigned, ``placement.window_for``:
(SCORING_DEPTH + SYNC_GROUP) x procs + 1, that is per scoring process the batch
it scores and the next one, read meanwhile (SCORING_DEPTH), and those written
and waiting for their group's flush to storage (SYNC_GROUP), plus one queued
at the rank. So the next batch is there before the current one ends, and no
rank waits on rank 0 between batches. Where batches prove short, a worker lets its
processes hold more (pool.deepen: ~3 x tuning.REPORT_SECONDS of batches each) and asks
for as many more with another Request (not under ``--window``). Each message's
``tag`` is its MPI tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..plan import Batch


@dataclass(frozen=True)
class Request:
    tag: ClassVar[int] = 11
    count: int


@dataclass(frozen=True)
class Completed:
    """Batches written and durable, in the order they ended: one message for all that a
    wake-up of the rank found ended, so rank 0's cost is per report, not per batch."""

    tag: ClassVar[int] = 12
    batch_ids: tuple[int, ...]
    failed_items: tuple[int, ...] = ()  # per batch, items without a result; () when none
    # its processes may run dry before its next report: rank 0 looks for its messages at
    # the pace of its batches, not of its reports (coordinator.py RankZero._pump)
    running_low: bool = True


@dataclass(frozen=True)
class Failed:
    tag: ClassVar[int] = 13
    batch_id: int
    error: str
    traceback: str = ""
    fatal: str = ""  # an error that is not the batch's (storage full, input changed): its class


@dataclass(frozen=True)
class StopRequested:
    tag: ClassVar[int] = 14
    reason: str


@dataclass(frozen=True)
class Returned:
    tag: ClassVar[int] = 15
    batch_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """A worker's last message, the answer to Stop: nothing more will come from it."""

    tag: ClassVar[int] = 16


@dataclass(frozen=True)
class Assign:
    """Batches for the worker, in row order, as many as it asked for and may take (a
    bundle: one message, not one per batch), each with how often it failed before."""

    tag: ClassVar[int] = 21
    batches: tuple[Batch, ...]
    attempts: tuple[int, ...]


@dataclass(frozen=True)
class Drain:
    tag: ClassVar[int] = 22


@dataclass(frozen=True)
class Stop:
    tag: ClassVar[int] = 23


Message = (Request | Completed | Failed | StopRequested | Returned | Finished | Assign | Drain
           | Stop)
