"""Moving protocol messages between ranks with MPI point-to-point, and the few collectives.

With the collectives below, the only place mpiscore talks MPI. Waiting never spins a
core: MPI is polled with a matched probe, and between polls the caller sleeps
(or waits on its scoring processes) for a delay that grows from 10 us to 1 ms
while nothing arrives, so an idle coordinator or worker costs almost no CPU
while the scoring processes on its node work.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

MAX_SLEEP_SECONDS = 1e-3


class Backoff:
    """Wait a little longer each time nothing arrived; start over when something did."""

    def __init__(self, first: float = 1e-5, most: float = MAX_SLEEP_SECONDS) -> None:
        self.first, self.most, self.delay = first, most, 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def next_delay(self) -> float:
        self.delay = min(self.most, self.delay * 2 or self.first)
        return self.delay

    def wait(self) -> None:
        time.sleep(self.next_delay())


class MpiCoordinatorLink:
    """Rank 0's end: messages from any worker rank, and to each of them."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm, self.status = comm, MPI.Status()
        self.any_source, self.any_tag = MPI.ANY_SOURCE, MPI.ANY_TAG

    def poll(self) -> tuple[int, Any] | None:
        pending = self.comm.improbe(self.any_source, self.any_tag, self.status)
        if pending is None:
            return None
        source = self.status.Get_source()
        return source, pending.recv()

    def send(self, rank: int, message: Any) -> None:
        self.comm.send(message, dest=rank, tag=message.tag)


class MpiWorkerLink:
    """A worker rank's end: messages to and from the coordinator on rank 0."""

    def __init__(self, comm: Any, coordinator: int = 0) -> None:
        from mpi4py import MPI

        self.comm, self.coordinator, self.any_tag = comm, coordinator, MPI.ANY_TAG

    def poll(self) -> Any | None:
        pending = self.comm.improbe(self.coordinator, self.any_tag)
        return None if pending is None else pending.recv()

    def send(self, message: Any) -> None:
        self.comm.send(message, dest=self.coordinator, tag=message.tag)


def world() -> Any:
    """MPI_COMM_WORLD (initialising MPI on first use)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def finalize(comm: Any) -> None:
    """Finalize MPI now in a multi-rank job, so a failure to finalize (such as a message
    left unreceived) is reported here instead of being lost at interpreter exit, where
    MPICH's launcher would then kill the other ranks. A single rank finalizes at exit."""
    from mpi4py import MPI

    if comm.Get_size() > 1 and not MPI.Is_finalized():
        MPI.Finalize()


def shutdown() -> None:
    """Finalize MPI if this process initialised it and has not finalised it yet (before
    leaving without the interpreter's teardown, which would have done it)."""
    if "mpi4py.MPI" not in sys.modules:
        return
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


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
