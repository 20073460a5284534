"""The coordinator loop (rank 0) and the worker loop (every rank), mirrored.

Protocol, all messages small and typed; bulk data never travels here:

    worker                         coordinator
      Request(count=window)  --->    hand out up to `count` batches
                             <---    Assign(batch) ...
      (read, score, write)
      Completed(batch_id)    --->    record it, hand out one more
                             <---    Assign(batch) | nothing left
      ...                            once every batch is completed:
                             <---    Stop()

A worker keeps ``window`` batches assigned, so the next one is already queued
when it finishes the current one and it never waits on rank 0 between
batches. Rank 0 runs the coordinator on its main thread and its own worker
on a second thread, linked by an in-process channel (see transport.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .plan import Batch
from .schedule import Scheduler


@dataclass(frozen=True)
class Request:
    """Worker -> coordinator: send me ``count`` more batches."""

    tag: ClassVar[int] = 11
    count: int


@dataclass(frozen=True)
class Completed:
    """Worker -> coordinator: ``batch_id`` is scored and written; send one more."""

    tag: ClassVar[int] = 12
    batch_id: int


@dataclass(frozen=True)
class Assign:
    """Coordinator -> worker: score this batch."""

    tag: ClassVar[int] = 13
    batch: Batch


@dataclass(frozen=True)
class Stop:
    """Coordinator -> worker: every batch is done; leave the loop."""

    tag: ClassVar[int] = 14


Message = Request | Completed | Assign | Stop


class CoordinatorLink(Protocol):
    """What the coordinator needs from a transport."""

    def receive(self) -> tuple[int, Message]: ...

    def send(self, rank: int, message: Message) -> None: ...


class WorkerLink(Protocol):
    """What a worker needs from a transport."""

    def receive(self) -> Message: ...

    def send(self, message: Message) -> None: ...


@dataclass
class WorkerTimes:
    """How a worker spent its time in the loop."""

    batches: int = 0
    rows: int = 0
    busy_seconds: float = 0.0
    idle_seconds: float = 0.0
    idle_cpu_seconds: float = 0.0


def coordinate(link: CoordinatorLink, scheduler: Scheduler, ranks: list[int],
               on_complete: Callable[[int], None] = lambda batch_id: None) -> None:
    """Hand out batches until all are completed, then stop every worker."""
    while not scheduler.done:
        rank, message = link.receive()
        if isinstance(message, Request):
            _hand_out(link, scheduler, rank, message.count)
        elif isinstance(message, Completed):
            scheduler.complete(message.batch_id, rank)
            on_complete(message.batch_id)
            _hand_out(link, scheduler, rank, 1)
        else:
            raise RuntimeError(f"coordinator got unexpected {message!r} from rank {rank}")
    for rank in ranks:
        link.send(rank, Stop())


def _hand_out(link: CoordinatorLink, scheduler: Scheduler, rank: int, count: int) -> None:
    for _ in range(count):
        batch = scheduler.assign(rank)
        if batch is None:
            return
        link.send(rank, Assign(batch))


def work(link: WorkerLink, process: Callable[[Batch], int], window: int) -> WorkerTimes:
    """Ask for batches, process each, report it done, until told to stop."""
    times = WorkerTimes()
    link.send(Request(window))
    while True:
        wall, cpu = time.perf_counter(), time.thread_time()
        message = link.receive()
        times.idle_seconds += time.perf_counter() - wall
        times.idle_cpu_seconds += time.thread_time() - cpu
        if isinstance(message, Stop):
            return times
        if not isinstance(message, Assign):
            raise RuntimeError(f"worker got unexpected {message!r}")
        started = time.perf_counter()
        times.rows += process(message.batch)
        times.batches += 1
        times.busy_seconds += time.perf_counter() - started
        link.send(Completed(message.batch.batch_id))
