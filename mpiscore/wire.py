"""The pipes between a rank and each of its scoring processes: the channel, and every
message that crosses it, both ends of each exchange side by side.

    exchange  rank sends (rank/pool.py)   scoring process answers (scoring/main.py)
    --------  --------------------------  --------------------------------------------
    preopen   Preopen                     (no answer of its own: Ready says whether the
              (before the job, to every   session it opened was the job's, reused)
              process but rank 0's first;
              ONNX models only)
    prepare   PrepareRequest              JobPrepared | PrepareFailed
              (rank 0's first process only, before the job exists; for a dry run
              it answers DryRunDone | PrepareFailed, then ends)
    start     ScorerSpec                  Ready | StartFailed
    score     Score (a bundle: as many    Scored (read and scored: now being written),
              as the process has room     then Flushed (durable: the Durable of up
              for, at most its depth,     to tuning.SYNC_GROUP batches one flush
              rank/pool.py, not yet       made so) | BatchFailed; what is made durable
              Scored)                     while a short batch is scored rides in its
                                          Scored instead of a Flushed of its own, and
                                          while short batches keep coming one Scored
                                          says several (up to tuning.REPORT_SECONDS)
    close     Close                       Closed (what the process used)
    (always)  Scoreboard: which batch the process finished last, and when, in memory
              both share: which batch it is on, without a message

One message is one wake-up of the rank (~30 us of its CPU on a busy node, as much as
the Python that handles it), so a scoring process says as much as it can in each: a
flush's Dones travel together, and with the next Scored when that is near; the
Scored of short batches wait while the next batches are there, and the rank hands a
process all it has room for in one Score.

A scoring process handles the exchanges in that order and never sends unasked;
a peer that is gone shows as the end of its pipe (``EOFError``), which a
scoring process takes as ``Close``. Any other message is a bug of the other
end: ``recv_at_rank`` and ``recv_in_scorer`` raise ``ProtocolError``.

The part of ``multiprocessing.connection`` mpiscore uses, with nothing to
import but the standard library's C modules: importing multiprocessing
(sockets, tempfile, its own package) cost each process ~10 ms of its start-up,
which is the job's critical path. A message is an 8-byte length and a pickle.
Messages are typed, immutable ``NamedTuple`` classes rather than frozen dataclasses
for the same reason (importing ``dataclasses`` loads ``inspect``: ~9 ms), and are
told apart by class, never by position. Types of the core (Job, JobConfig...) are
named for type checking only, so the rank can import this before anything heavy.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from .config import JobConfig, ScorerSettings
    from .estimate import DryRun
    from .faults import FaultPlan
    from .job import Job
    from .lock import LockOwner
    from .plan import Batch


# -- preopen: open the model's session from its path before the job is known


class Preopen(NamedTuple):
    """Open an ONNX session for the model at ``model`` with ``settings`` now, while rank 0
    prepares the job: the session is kept for the job only if ScorerSpec then asks for
    exactly it (the same bytes, by digest, the same settings); else it is dropped and
    one opened as without this. A failure here is not reported: opening again then
    reports it as without this."""

    kind: str  # the scorer kind (only "onnx" is ever sent: an entry script's init()
    # runs only after the job's lock is taken)
    model: str  # the model's path, as the job names it (Job.model_name)
    settings: ScorerSettings


# -- prepare: rank 0's first scoring process checks and plans the job (scoring/prepare.py)


class PrepareRequest(NamedTuple):
    """Asks rank 0's first scoring process to check, plan and create the job; or, for
    a dry run (``dry_run_seconds`` > 0), to check it and time batches for so long."""

    config: JobConfig
    settings: ScorerSettings
    owner: LockOwner  # rank 0's process, which holds the job's locks
    dry_run_seconds: float = 0.0
    started: float = 0.0  # when the dry run began (time.time())


class DryRunDone(NamedTuple):
    """The dry run's checks passed; what they and the calibration found."""

    dry: DryRun


class JobPrepared(NamedTuple):
    """The checked job, and the batches an interrupted run already wrote."""

    job: Job
    done: set[int]


class PrepareFailed(NamedTuple):
    """What the checks found (an MpiscoreError), or a bug's traceback as a RuntimeError."""

    error: Exception


# -- start: every scoring process opens its reader, scorer and writer once


class ScorerSpec(NamedTuple):
    """What a scoring process needs, sent to it once at start."""

    job: Job
    model_bytes: bytes | None  # None for the process that prepared the job: it has a scorer
    settings: ScorerSettings
    where: str
    faults: FaultPlan
    records_death: bool = False  # a rank's first: if the rank dies, say so (summary.json)


class Ready(NamedTuple):
    """The process is set up: it takes batches from now on. ``preopened``: its scorer is
    the session a Preopen opened before the job came."""

    preopened: bool = False


class StartFailed(NamedTuple):
    """Setting up failed (the scorer or the writer would not open)."""

    error: str


# -- score: a batch is read, scored, then written and flushed with others (scoring/main.py)


class Score(NamedTuple):
    """Score ``batches``, in order; ``attempts`` counts each one's earlier tries (0 for the
    first)."""

    batches: tuple[Batch, ...]
    attempts: tuple[int, ...]


class StageTimes(NamedTuple):
    """Seconds one batch spent in each stage."""

    read: float
    score: float
    write: float  # its share of the flush that made it durable included


StageSeconds: TypeAlias = tuple[float, float, float]
"""A batch's read, score and write seconds: a StageTimes, or the plain tuple of a Durable."""


class Done(NamedTuple):
    """The batch is written and durable: the scoring process's note of it, sent to the
    rank in a :class:`Durable`, never alone."""

    batch_id: int
    times: StageTimes
    failed_items: int = 0  # of its items, those the scorer gave no result for (append_row)


class Durable(NamedTuple):
    """Batches written and durable, in the order they were made so (what a Flushed or a
    Scored says of them), as columns of numbers: a rank unpickles one object per
    report, not two per batch (a Done and its StageTimes, each made through its
    Python ``__new__``: a report of 8 batches took 9 us warm and ~44 us with the caches
    a scorer leaves, against 2.5 and ~33 so)."""

    batch_ids: tuple[int, ...] = ()
    seconds: tuple[float, ...] = ()  # each batch's read, score and write seconds, in turn
    failed_items: tuple[int, ...] = ()  # each batch's (Done.failed_items); () if all are 0

    @classmethod
    def of(cls, done: Sequence[Done]) -> Durable:
        failed = tuple(entry.failed_items for entry in done)
        return cls(tuple(entry.batch_id for entry in done),
                   tuple(seconds for entry in done for seconds in entry.times),
                   failed if any(failed) else ())

    def each(self) -> Iterator[tuple[int, StageSeconds, int]]:
        """Each batch's id, stage seconds (read, score, write) and failed items."""
        seconds = iter(self.seconds)
        failed = self.failed_items or repeat(0, len(self.batch_ids))
        for batch_id, read, score, write, items in zip(self.batch_ids, seconds, seconds,
                                                       seconds, failed, strict=True):
            yield batch_id, (read, score, write), items


class Scored(NamedTuple):
    """These batches, in order, are read and scored and being written: the process takes
    the next. ``done``: batches made durable meanwhile (their Flushed waited for this)."""

    batch_ids: tuple[int, ...]
    done: Durable = Durable()


class Flushed(NamedTuple):
    """These batches are written and durable: one flush made them so (or several, while
    their Flushed waited for a Scored that did not come)."""

    done: Durable


class BatchFailed(NamedTuple):
    """The batch failed reading, scoring or writing; the process goes on."""

    batch_id: int
    error: str
    traceback: str
    fatal: str = ""  # the error class the job ends with, when it is not the batch's


class Scoreboard:
    """Which batch a scoring process finished last (scored or failed), and when: 16 bytes
    of memory the process and its rank share (a memfd), written by the process
    after each batch, read by the rank.

    The Scored of short batches wait while more are there, so the rank's messages
    no longer say which of the batches it handed over the process is on: the one
    after the last finished, since it finished. Without a message or a wake-up the
    rank so charges a process's death, or a batch that overran --batch-timeout, to
    the right batch. The time is CLOCK_MONOTONIC, one clock for the node's processes.
    """

    _LAYOUT = struct.Struct("=dq")  # when, batch id

    def __init__(self, fd: int) -> None:
        """On ``fd``, a memfd of the rank (:meth:`create`), inherited by the process."""
        import mmap  # a C module; only where a scoreboard is made

        self.fd = fd
        self.memory = mmap.mmap(fd, self._LAYOUT.size)

    @classmethod
    def create(cls) -> Scoreboard:
        """A new scoreboard that says no batch finished yet (batch id -1)."""
        fd = os.memfd_create("mpiscore-scoreboard")  # close-on-exec: passed on by name
        os.ftruncate(fd, cls._LAYOUT.size)
        board = cls(fd)
        board._LAYOUT.pack_into(board.memory, 0, 0.0, -1)
        return board

    def finished(self, batch_id: int, when: float) -> None:
        """The process is done scoring ``batch_id`` (or it failed) at ``when``."""
        self._LAYOUT.pack_into(self.memory, 0, when, batch_id)

    def last_finished(self) -> tuple[int, float]:
        """The batch the process finished last and when: (-1, 0.0) before the first.
        Read until two reads agree: the process may be writing it."""
        layout, memory = self._LAYOUT, self.memory
        seen = layout.unpack_from(memory)
        while (again := layout.unpack_from(memory)) != seen:
            seen = again
        when, batch_id = seen
        return batch_id, when

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


# -- close: the process closes its files and says what it used


class Close(NamedTuple):
    """No more batches: close the files and leave."""


class Closed(NamedTuple):
    """The files are closed; the process's CPU seconds and peak RSS, the rows its
    scorer ran at a time (0: whole batches; scorers/run_rows.py), and how a script's
    shutdown() failed, if it did."""

    cpu_seconds: float
    peak_rss_mib: float
    run_rows: int = 0
    shutdown_error: str = ""  # an entry script's shutdown() that raised, in a line


ToScorer: TypeAlias = Preopen | PrepareRequest | ScorerSpec | Score | Close
ToRank: TypeAlias = (JobPrepared | DryRunDone | PrepareFailed | Ready | StartFailed | Scored
                     | Flushed | BatchFailed | Closed)


class ProtocolError(RuntimeError):
    """A message the exchange does not allow: a bug of one end, never the user's."""


def unexpected(message: object, expected: str) -> ProtocolError:
    """The error for ``message`` arriving where only ``expected`` may."""
    return ProtocolError(f"{type(message).__name__} received; expected {expected}")


_TO_RANK: tuple[type, ...] = ToRank.__args__  # isinstance on a tuple: no union to walk
_TO_SCORER: tuple[type, ...] = ToScorer.__args__


def recv_at_rank(channel: Channel) -> ToRank:
    """The next message from a scoring process; ``EOFError``/``OSError`` if it is gone."""
    message = channel.recv()
    if not isinstance(message, _TO_RANK):
        raise unexpected(message, "a message to a rank")
    return message  # type: ignore[return-value]  # one of _TO_RANK


def recv_in_scorer(channel: Channel) -> ToScorer:
    """The next message from the rank; ``Close`` when the rank is gone."""
    try:
        message = channel.recv()
    except EOFError:
        return Close()
    if not isinstance(message, _TO_SCORER):
        raise unexpected(message, "a message to a scoring process")
    return message  # type: ignore[return-value]  # one of _TO_SCORER


# -- the channel

_LENGTH = struct.Struct("!Q")


class Channel:
    """One end: reads from one pipe, writes to the other.

    ``send`` and ``recv`` block; a peer that is gone shows as ``EOFError`` on
    ``recv`` and ``BrokenPipeError`` (an ``OSError``) on ``send``.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd

    def fileno(self) -> int:
        """The end to wait on (``select``-style)."""
        return self.read_fd

    @property
    def closed(self) -> bool:
        return self.read_fd < 0

    def send(self, message: object) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        data = _LENGTH.pack(len(data)) + data
        written = os.write(self.write_fd, data)  # all of it, but for a message > the pipe's
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(self.write_fd, view):]

    def recv(self) -> object:
        # one read each for the length and the message, as a whole message is there
        # almost always: the other end writes it at once
        (length,) = _LENGTH.unpack(self._read_exactly(_LENGTH.size))
        return pickle.loads(self._read_exactly(length))

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or the peer's end) is there to read, waiting up to ``timeout`` s."""
        return bool(wait([self], timeout))

    def close(self) -> None:
        for fd in {self.read_fd, self.write_fd} - {-1}:
            os.close(fd)
        self.read_fd = self.write_fd = -1

    def _read_exactly(self, size: int) -> bytes | bytearray:
        data = os.read(self.read_fd, size)
        if len(data) == size:
            return data
        buffer = bytearray(data)
        while len(buffer) < size:
            more = os.read(self.read_fd, size - len(buffer))
            if not more:
                raise EOFError("the other end of the channel is closed")
            buffer += more
        return buffer


def pipe() -> tuple[Channel, tuple[int, int]]:
    """This process's channel, and the two descriptors of the other end (read, write),
    to hand to a child process and then close here."""
    down_read, down_write = os.pipe()  # to the child
    up_read, up_write = os.pipe()  # from the child
    return Channel(up_read, down_write), (down_read, up_write)


def wait(channels: Iterable[Channel], timeout: float) -> list[Channel]:
    """The channels with something to read, waiting up to ``timeout`` seconds for one."""
    by_fd = {channel.fileno(): channel for channel in channels}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(max(0.0, timeout) * 1000)]
