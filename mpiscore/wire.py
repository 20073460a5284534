"""Pickled messages over a pair of pipes: how a rank and each of its scoring processes talk.

The part of ``multiprocessing.connection`` mpiscore uses, with nothing to
import but the standard library's C modules: importing multiprocessing
(sockets, tempfile, its own package) cost each process ~10 ms of its start-up,
which is the job's critical path. A message is an 8-byte length and a pickle.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from collections.abc import Iterable

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
        view = memoryview(_LENGTH.pack(len(data)) + data)
        while view:
            view = view[os.write(self.write_fd, view):]

    def recv(self) -> object:
        (length,) = _LENGTH.unpack(self._read_exactly(_LENGTH.size))
        return pickle.loads(self._read_exactly(length))

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or the peer's end) is there to read, waiting up to ``timeout`` s."""
        return bool(wait([self], timeout))

    def close(self) -> None:
        for fd in {self.read_fd, self.write_fd} - {-1}:
            os.close(fd)
        self.read_fd = self.write_fd = -1

    def _read_exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            got = os.readv(self.read_fd, [view[done:]])
            if got == 0:
                raise EOFError("the other end of the channel is closed")
            done += got
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
