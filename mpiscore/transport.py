"""Moving protocol messages: MPI point-to-point between ranks, queues within one.

The only module besides the parallel writers that talks MPI. Waiting never
spins a core: MPI is polled with a matched probe and an exponential sleep
(10 us up to 1 ms), so an idle coordinator or worker costs almost no CPU
while ranks on the same node are scoring. The in-process :class:`LocalHub`
links rank 0's own worker thread to the coordinator, and lets unit tests run
the real loops with several worker threads and no MPI at all.
"""

from __future__ import annotations

import queue
import socket
import time
from typing import Any

from .protocol import Message

MAX_SLEEP_SECONDS = 1e-3


class Backoff:
    """Sleep a little longer each time nothing arrived; start over when something did."""

    def __init__(self, first: float = 1e-5, most: float = MAX_SLEEP_SECONDS) -> None:
        self.first, self.most, self.delay = first, most, 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def wait(self) -> None:
        self.delay = min(self.most, self.delay * 2 or self.first)
        time.sleep(self.delay)


class WorkerFailed(Exception):
    """Carries an exception raised on a worker thread of this process to the coordinator."""

    def __init__(self, rank: int, error: BaseException) -> None:
        super().__init__(f"rank {rank} worker thread failed: {error}")
        self.rank, self.error = rank, error


class LocalHub:
    """Queues between the coordinator and worker threads of the same process."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.outboxes: dict[int, queue.SimpleQueue[Message]] = {}

    def link(self, rank: int) -> LocalWorkerLink:
        self.outboxes[rank] = queue.SimpleQueue()
        return LocalWorkerLink(self, rank)

    def report_failure(self, rank: int, error: BaseException) -> None:
        """Wake the coordinator with a worker thread's exception."""
        self.inbox.put((rank, WorkerFailed(rank, error)))


class LocalWorkerLink:
    """A worker thread's end of a :class:`LocalHub`."""

    def __init__(self, hub: LocalHub, rank: int) -> None:
        self.hub, self.rank = hub, rank

    def send(self, message: Message) -> None:
        self.hub.inbox.put((self.rank, message))

    def receive(self) -> Message:
        return self.hub.outboxes[self.rank].get()


class CoordinatorTransport:
    """The coordinator's end: local worker threads via a hub, other ranks via MPI."""

    def __init__(self, hub: LocalHub, comm: Any | None = None) -> None:
        self.hub = hub
        self.comm = comm if comm is not None and comm.Get_size() > 1 else None
        self.backoff = Backoff()

    def send(self, rank: int, message: Message) -> None:
        if rank in self.hub.outboxes:
            self.hub.outboxes[rank].put(message)
        else:
            self.comm.send(message, dest=rank, tag=message.tag)

    def receive(self) -> tuple[int, Message]:
        if self.comm is None:
            return _unwrap(self.hub.inbox.get())
        from mpi4py import MPI

        status = MPI.Status()
        while True:
            try:
                return _unwrap(self.hub.inbox.get_nowait())
            except queue.Empty:
                pass
            pending = self.comm.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            if pending is not None:
                self.backoff.reset()
                return status.Get_source(), pending.recv()
            self.backoff.wait()


def _unwrap(item: tuple[int, Any]) -> tuple[int, Message]:
    rank, message = item
    if isinstance(message, WorkerFailed):
        raise message.error
    return rank, message


class MpiWorkerLink:
    """A worker rank's end: messages to and from the coordinator on rank 0."""

    def __init__(self, comm: Any, coordinator: int = 0) -> None:
        from mpi4py import MPI

        self.comm, self.coordinator, self.any_tag = comm, coordinator, MPI.ANY_TAG
        self.backoff = Backoff()

    def send(self, message: Message) -> None:
        self.comm.send(message, dest=self.coordinator, tag=message.tag)

    def receive(self) -> Message:
        while True:
            pending = self.comm.improbe(self.coordinator, self.any_tag)
            if pending is not None:
                self.backoff.reset()
                return pending.recv()
            self.backoff.wait()


def world() -> Any:
    """MPI_COMM_WORLD, initialising MPI with thread support for rank 0's worker thread."""
    import mpi4py

    mpi4py.rc.threads = True
    mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    return MPI.COMM_WORLD


def threads_supported() -> bool:
    """Whether this MPI lets two threads of a process call MPI at the same time."""
    from mpi4py import MPI

    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


def node_local(comm: Any) -> tuple[int, int]:
    """This rank's index among the ranks of its node, and how many share the node."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def hostname() -> str:
    return socket.gethostname()


def broadcast(comm: Any | None, value: Any) -> Any:
    """Send rank 0's ``value`` to every rank (a no-op without MPI).

    The ranks first meet in a sleeping barrier: rank 0 may take a while to
    produce ``value`` (opening thousands of input files), and MPICH's blocking
    broadcast would have the other ranks spin on their cores meanwhile.
    """
    if comm is None:
        return value
    barrier(comm)
    return comm.bcast(value, root=0)


def gather(comm: Any | None, value: Any) -> list[Any] | None:
    """Collect one value per rank on rank 0 (None elsewhere)."""
    return [value] if comm is None else comm.gather(value, root=0)


def barrier(comm: Any | None) -> None:
    """Wait for all ranks without spinning a core (MPICH's barrier busy-polls)."""
    if comm is None:
        return
    request = comm.Ibarrier()
    backoff = Backoff()
    while not request.Test():
        backoff.wait()
