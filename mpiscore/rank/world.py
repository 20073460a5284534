"""The world of ranks: who this rank is, the few collectives, and the links that carry messages.

One small interface, :class:`World`, with two implementations: :class:`MpiWorld`
wraps an mpi4py communicator (this is the only module that imports mpi4py),
:class:`LocalWorld` is this process alone, without MPI. Messages between the
coordinator and the workers travel over links: MPI point-to-point between
ranks, and :class:`Loopback` in process, which carries rank 0's messages to and
from its own worker, and every rank's in the unit tests (the test double ships
with the library, as httpx's MockTransport does).

Waiting never spins a core, nor wakes it for nothing: a rank blocks on its
scoring processes' pipes, which wake it as soon as a batch ends, and polls MPI
(a matched probe: MPI has no descriptor to block on) only as often as a reply
is due, as :class:`Pacer` decides from the observed interval between the
events that call for one; otherwise every LONGEST_WAIT_SECONDS, for stops.
"""

from __future__ import annotations

import socket
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import MpiscoreError
from ..tuning import (
    IDLE_POLL_SHARE,
    LONGEST_WAIT_SECONDS,
    MAX_SLEEP_SECONDS,
    POLL_SHARE,
    PROMPT_WAIT_SECONDS,
    STARTING_SECONDS,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .messages import Message

T = TypeVar("T")


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


class Pacer:
    """How long to wait before polling MPI again, while a reply is due.

    ``event()`` marks what calls for a poll soon (a message arriving at rank 0, a
    batch ending at a worker, which then asks for the next). The first poll after
    one comes ``share`` of the usual interval between them later (a running
    mean, in which a message that stands for several events weighs as they
    would one by one), and each wait after that doubles, up to that interval
    while events keep coming at their pace, up to ``most`` once they have stopped. So MPI is
    polled a few times per event, whether events come every 10 us or every 10 s,
    instead of a thousand times a second. Before the first interval is known the
    waits start at ``first``; for STARTING_SECONDS at most, while no pace is kept
    (none known yet, or lost: two ranks' first Requests, microseconds apart, make a
    pace that is lost at once), they grow only to PROMPT_WAIT_SECONDS or
    IDLE_POLL_SHARE of the silence since the last event, if longer: the first reply
    starts the rank, and the next one is what its processes deepen on, a batch later,
    so it is looked for a few times per batch whether batches take 10 ms or 1 s.

    Events have stopped only after a silence four times the longest of late:
    events come in bursts (every rank answers the same hand-out), so the mean
    interval is far shorter than the silence between two bursts. Were that
    silence taken for a stop, a rank would back off to ``most`` while its reply
    was on its way, the ranks it waits on would back off in turn while they
    wait for it, and the two would settle at ``most`` per round trip, each
    slow because the other is (rank 0 answering 300 batches/s instead of
    20,000, benchmarks/dispatch.py).
    """

    def __init__(self, share: float = POLL_SHARE, first: float = 1e-5,
                 most: float = LONGEST_WAIT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share, self.first, self.most, self.clock = share, first, most, clock
        self.starting_until = clock() + STARTING_SECONDS
        self.interval: float | None = None  # the running mean between events
        self.last: float | None = None  # when the last event came
        self.longest = 0.0  # the longest silence between events of late
        self.delay = first

    def event(self, count: int = 1) -> None:
        """``count`` events came now (one message may stand for several)."""
        now = self.clock()
        if self.last is not None:  # the time before the first event is no interval
            silence = now - self.last
            gap = silence / count
            self.interval = gap if self.interval is None else \
                self.interval + (gap - self.interval) * (1 - (7 / 8) ** count)
            self.longest = max(silence, self.longest - silence / 8)  # forgotten in 8x its time
        self.last = now
        if self.interval is not None:
            self.delay = min(self.most, max(self.first, self.interval * self.share))

    def next_delay(self, idle: bool = False) -> float:
        """The wait before the next poll (each call lengthens the next). ``idle``: nothing
        but MPI can wake the caller (its processes hold no batch); while the pace is
        kept its waits then grow only to IDLE_POLL_SHARE of the interval, or of the
        silence once that is longer, and to no less than MAX_SLEEP_SECONDS (or the
        interval, if shorter): ranks waiting for instant batches would spin."""
        interval, most, now = self.interval, self.most, self.clock()
        silence = 0.0 if self.last is None else now - self.last
        starting = False
        if interval is not None and self.last is not None and \
                silence < 4 * max(interval, self.longest):  # pace kept
            if idle:
                interval = min(interval, max(MAX_SLEEP_SECONDS,
                                             max(interval, silence) * IDLE_POLL_SHARE))
            most = min(most, max(self.first, interval))
        elif starting := now < self.starting_until:  # no pace yet, or lost while starting
            most = min(most, max(PROMPT_WAIT_SECONDS, silence * IDLE_POLL_SHARE))
        delay = min(self.delay, most)
        # while starting, what is awaited (a first request, report or assignment) is
        # milliseconds away: after the first wait, none under MAX_SLEEP_SECONDS (on the
        # processes' pipes poll(2) waited 1 ms for each of 7 doublings up from ``first``)
        self.delay = min(most, max(delay * 2, MAX_SLEEP_SECONDS) if starting else delay * 2)
        return delay


class CoordinatorLink(Protocol):
    """Rank 0's end: messages from any worker rank, and to each of them."""

    def poll(self) -> tuple[int, Message] | None: ...

    def send(self, rank: int, message: Message) -> None: ...


class WorkerLink(Protocol):
    """A worker's end: messages to and from the coordinator."""

    def poll(self) -> Message | None: ...

    def send(self, message: Message) -> None: ...


class Links(Protocol):
    """What wiring rank 0 needs of its world: how many ranks, and the link to the others."""

    @property
    def size(self) -> int: ...

    def coordinator_link(self) -> CoordinatorLink | None: ...


class Loopback:
    """In-process links between a coordinator and ``size`` worker ranks: deques, not MPI.

    Safe between threads (a deque's append and popleft are atomic, and each
    queue has one reader), so tests can run every rank's real loop in a thread.
    One queue each way per rank: a worker's send is then a bare ``deque.append``.
    """

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self.up: list[deque[Message]] = [deque() for _ in range(size)]
        self.down: list[deque[Message]] = [deque() for _ in range(size)]

    def coordinator_link(self) -> Loopback | None:
        """The links to ranks other than 0, as :meth:`World.coordinator_link` gives them."""
        return self if self.size > 1 else None

    def worker_link(self, rank: int) -> LoopbackEnd:
        return LoopbackEnd(self, rank)

    def poll(self) -> tuple[int, Message] | None:
        for rank, up in enumerate(self.up):
            if up:
                return rank, up.popleft()
        return None

    def send(self, rank: int, message: Message) -> None:
        self.down[rank].append(message)


class LoopbackEnd:
    """One worker rank's end of a :class:`Loopback`."""

    def __init__(self, loopback: Loopback, rank: int) -> None:
        self.down, self.rank = loopback.down[rank], rank
        self.send: Callable[[Message], None] = loopback.up[rank].append

    def poll(self) -> Message | None:
        return self.down.popleft() if self.down else None


class World(ABC):
    """This rank, how many there are, and what they do together.

    Every rank calls a collective (barrier, broadcast, gather) at the same point.
    """

    rank: int
    size: int

    @abstractmethod
    def barrier(self) -> None:
        """Wait for every rank without spinning a core."""

    @abstractmethod
    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""

    @abstractmethod
    def gather(self, value: T) -> list[T] | None:
        """One value per rank, on rank 0 (None elsewhere)."""

    @abstractmethod
    def abort(self, code: int) -> None:
        """End every rank of the job now, with ``code``."""

    @abstractmethod
    def finalize(self) -> None:
        """Leave the world cleanly, reporting a failure to do so here."""

    @abstractmethod
    def node_local(self) -> tuple[int, int]:
        """This rank's index among the ranks of its node, and how many share the node."""

    @abstractmethod
    def coordinator_link(self) -> CoordinatorLink | None:
        """Rank 0's link to the other ranks; None when it is alone."""

    @abstractmethod
    def worker_link(self) -> WorkerLink:
        """A rank's link to the coordinator on rank 0 (ranks other than 0: rank 0's own
        worker is linked to its coordinator in process)."""

    def hostname(self) -> str:
        return socket.gethostname()

    def from_rank_zero(self, step: Callable[[], T], what: str) -> T:
        """``step``'s result, computed on rank 0, on every rank; or its error, raised on
        every rank as one every rank saw (so all leave cleanly, none is aborted).
        ``what`` names the step for a bug's message."""
        outcome: T | BaseException | None = None
        if self.rank == 0:
            try:
                outcome = step()
            except Exception as exc:
                outcome = exc
        outcome = self.broadcast(outcome)
        if isinstance(outcome, MpiscoreError):
            raise outcome.as_collective()
        if isinstance(outcome, BaseException):
            raise MpiscoreError(f"{what} failed on rank 0: {outcome!r}",
                                collective=True) from outcome
        return outcome  # type: ignore[return-value]  # rank 0's T


class LocalWorld(World):
    """This process alone: rank 0 of 1, collectives return at once, no MPI."""

    rank, size = 0, 1

    def barrier(self) -> None:
        return

    def broadcast(self, value: T) -> T:
        return value

    def gather(self, value: T) -> list[T] | None:
        return [value]

    def abort(self, code: int) -> None:
        sys.exit(code)

    def finalize(self) -> None:
        return

    def node_local(self) -> tuple[int, int]:
        return 0, 1

    def coordinator_link(self) -> CoordinatorLink | None:
        return None

    def worker_link(self) -> WorkerLink:
        raise RuntimeError("a world of one rank has no link to another")


class MpiWorld(World):
    """The ranks of an mpi4py communicator."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @classmethod
    def comm_world(cls) -> MpiWorld:
        """MPI_COMM_WORLD (initialising MPI on first use)."""
        from mpi4py import MPI

        return cls(MPI.COMM_WORLD)

    def barrier(self) -> None:
        """MPICH's own barrier busy-polls: poll a non-blocking one, sleeping in between."""
        request = self.comm.Ibarrier()
        backoff = Backoff()
        while not request.Test():
            backoff.wait()

    def broadcast(self, value: T) -> T:
        """The ranks first meet in a sleeping barrier: rank 0 may take a while to produce
        ``value`` (opening thousands of input files), and MPICH's blocking broadcast
        would have the other ranks spin on their cores meanwhile."""
        self.barrier()
        result: T = self.comm.bcast(value, root=0)
        return result

    def gather(self, value: T) -> list[T] | None:
        result: list[T] | None = self.comm.gather(value, root=0)
        return result

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    def finalize(self) -> None:
        """Finalize MPI now in a multi-rank job, so a failure to finalize (such as a message
        left unreceived) is reported here instead of being lost at interpreter exit, where
        MPICH's launcher would then kill the other ranks. A single rank finalizes at exit."""
        from mpi4py import MPI

        if self.size > 1 and not MPI.Is_finalized():
            MPI.Finalize()

    def node_local(self) -> tuple[int, int]:
        from mpi4py import MPI

        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return local.Get_rank(), local.Get_size()
        finally:
            local.Free()

    def coordinator_link(self) -> CoordinatorLink | None:
        return MpiCoordinatorLink(self.comm) if self.size > 1 else None

    def worker_link(self) -> WorkerLink:
        return MpiWorkerLink(self.comm)


def as_world(comm: object | None) -> World:
    """A World as ``run(config, comm)`` takes it: a World, an mpi4py communicator, or
    None for this process alone."""
    if comm is None:
        return LocalWorld()
    return comm if isinstance(comm, World) else MpiWorld(comm)


def _probe(comm: Any, source: int, tag: int, status: Any = None) -> Any:
    """``comm.improbe``, made again at once when it matched nothing.

    MPICH (ch4, the mpich wheel's 5.0) matches a probe against what has arrived
    before it makes progress, so a message that came in since the last call is
    matched only by the next one. Where calls are paced (Pacer: tens of ms apart
    on 20 ms batches) every message waited one wait more: at the end of a light
    ``-n 2`` job rank 1's last report was seen 38 ms after it was sent and rank 0's
    Stop 51 ms, against one wait each with two probes. The second costs 0.3 us.
    """
    pending = comm.improbe(source, tag, status)
    return pending if pending is not None else comm.improbe(source, tag, status)


class MpiCoordinatorLink:
    """Rank 0's end over MPI: messages from any worker rank, and to each of them."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm, self.status = comm, MPI.Status()
        self.any_source, self.any_tag = MPI.ANY_SOURCE, MPI.ANY_TAG

    def poll(self) -> tuple[int, Message] | None:
        pending = _probe(self.comm, self.any_source, self.any_tag, self.status)
        if pending is None:
            return None
        source = self.status.Get_source()
        return source, pending.recv()

    def send(self, rank: int, message: Message) -> None:
        self.comm.send(message, dest=rank, tag=message.tag)


class MpiWorkerLink:
    """A worker rank's end over MPI: messages to and from the coordinator on rank 0."""

    def __init__(self, comm: Any, coordinator: int = 0) -> None:
        from mpi4py import MPI

        self.comm, self.coordinator, self.any_tag = comm, coordinator, MPI.ANY_TAG

    def poll(self) -> Message | None:
        pending = _probe(self.comm, self.coordinator, self.any_tag)
        return None if pending is None else pending.recv()

    def send(self, message: Message) -> None:
        self.comm.send(message, dest=self.coordinator, tag=message.tag)


def shutdown() -> None:
    """Finalize MPI if this process initialised it and has not finalised it yet (before
    leaving without the interpreter's teardown, which would have done it)."""
    if "mpi4py.MPI" not in sys.modules:
        return
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
