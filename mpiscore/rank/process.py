"""One scoring process, seen from its rank: start it, hand it batches, watch it end.

Light on purpose (the standard library's C modules and ``subprocess``):
__main__.py starts the first scoring process with it before importing
anything else, so that process's interpreter start and imports overlap all of
the rank's own start-up. pool.py drives a rank's processes together.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

from ..wire import Score, Scoreboard, pipe

if TYPE_CHECKING:
    from ..plan import Batch

# The child's command: the parent's sys.path (as multiprocessing's spawn does), then
# scoring/start.py. ``-S`` skips the site module (~10 ms): the paths it would add are given.
_CHILD = ("import sys; sys.path[:] = sys.argv[2:]; "
          "from mpiscore.scoring.start import loaded_main; "
          "loaded_main()(*map(int, sys.argv[1].split(',')))")
_STOPS = {signal.SIGTERM, signal.SIGINT}  # the scoring process ignores them (scoring/main.py)
# Where this package lies (mpiscore/rank/process.py, three levels up), for a parent that
# finds it by an import hook (editable installs).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the rank process sets for itself alone (rank_environment): always, and where the
# launch set nothing; and the values it replaced, which its scoring processes start with.
_RANK_ONLY = {"OPENBLAS_NUM_THREADS": "1"}
_RANK_DEFAULTS = {"UCX_MEM_EVENTS": "no"}
_REPLACED: dict[str, str | None] = {}


def rank_environment() -> None:
    """Set what the rank process's libraries read when they load: called once by the
    ``score`` command, before NumPy and MPI load (not by others: ``slurm --submit``
    hands its environment to sbatch). Scoring processes started from here on get the
    variables as the launch set them, and size their own BLAS (scoring/start.py).

    - ``OPENBLAS_NUM_THREADS=1``: NumPy, which rank 0 loads (through h5py) to finish
      the output, starts no BLAS threads. The rank does no linear algebra, and
      OpenBLAS's worker spins on a core after it starts: 20-40 ms of rank 0's loop CPU
      on the heavy 2-rank job (half of what waiting costs it there).
    - ``UCX_MEM_EVENTS=no`` unless the launch chose: UCX (the mpich wheel's MPICH
      links it, as do many sites') otherwise patches the C library's ``mmap`` family
      as it loads, 40 ms of CPU per rank here, half of what loading and starting MPI
      costs. Those events only keep UCX's cache of registered memory right for large
      zero-copy transfers; without them UCX caches no registration (it registers per
      transfer), and a rank sends small descriptors, never data.
    """
    for name, value in _RANK_ONLY.items():
        _REPLACED.setdefault(name, os.environ.get(name))
        os.environ[name] = value
    for name, value in _RANK_DEFAULTS.items():
        if name not in os.environ:
            _REPLACED.setdefault(name, None)
            os.environ[name] = value


def _child_environment() -> dict[str, str] | None:
    """The environment a scoring process starts with: the rank's, but for what
    :func:`rank_environment` replaced (None: the rank's as it is)."""
    if not _REPLACED:
        return None
    environment = dict(os.environ)
    for name, value in _REPLACED.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def early_processes(args: list[str]) -> list[ScorerProcess]:
    """The scoring processes to start before the rank imports anything heavy, for the
    command line ``args`` (``sys.argv[1:]``): none but for ``score``; as many as
    ``--procs-per-rank N`` asks for, else one.

    Every one of them is on the job's critical path: one started after the rank's
    imports and MPI start-up (0.3-0.4 s here) was still loading onnxruntime when the
    first had prepared the job. ``auto`` and a ``--config`` file are only known later
    (the node's cores, the file's value): then one, and the pool starts the others.
    With an explicit N and no job file the layout is exactly N (placement.layout),
    so no process started here is ever left over.
    """
    if args[:1] != ["score"]:
        return []
    count = 1
    for index, arg in enumerate(args):
        if arg == "--config" or arg.startswith("--config="):
            return [ScorerProcess()]
        value = (args[index + 1] if arg == "--procs-per-rank" and index + 1 < len(args)
                 else arg.partition("=")[2] if arg.startswith("--procs-per-rank=") else "")
        if value.isdigit() and int(value) > 0:
            count = int(value)
        if arg == "--":  # an entry script's own arguments follow
            break
    return [ScorerProcess() for _ in range(count)]


class ScorerProcess:
    """One scoring process and the batches it holds."""

    def __init__(self) -> None:
        self.conn, (read_fd, write_fd) = pipe()
        self.board = Scoreboard.create()
        paths = sys.path if _PACKAGE_ROOT in sys.path else [*sys.path, _PACKAGE_ROOT]
        # The child starts with SIGTERM/SIGINT blocked (a mask survives exec) until it
        # ignores them: a stop signal sent to every process of the job while the child
        # still imports (Slurm signals the whole step) must not kill it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-c", _CHILD,
                 f"{read_fd},{write_fd},{self.board.fd}", *paths],
                pass_fds=[read_fd, write_fd, self.board.fd], stdin=subprocess.DEVNULL,
                env=_child_environment(),
                start_new_session=True)  # out of the rank's group: see scoring/main.py
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_fd)
            os.close(write_fd)
        self.listener = select.poll()  # this process's pipe alone: is there more to read?
        self.listener.register(self.conn.fileno(), select.POLLIN)
        self.ready = False
        self.scoring: deque[Batch] = deque()  # not reported scored, oldest first (Scoreboard)
        self.writing: dict[int, Batch] = {}  # scored, being written, by id (oldest first)
        self.started = 0.0  # when the first of ``scoring`` was started
        self.unsent: list[tuple[Batch, int]] = []  # submitted, to go in the next Score

    def submit(self, batch: Batch, attempt: int) -> None:
        """Hand the process a batch, sent with the others of this wake-up by :meth:`send`."""
        if not self.scoring:
            self.started = time.monotonic()
        self.scoring.append(batch)
        self.unsent.append((batch, attempt))

    def send(self) -> None:
        """Send what :meth:`submit` handed over since the last call, in one Score."""
        if self.unsent:
            batches, attempts = zip(*self.unsent, strict=True)
            self.unsent.clear()
            with contextlib.suppress(OSError):  # it just died: the pool's next poll finds it
                self.conn.send(Score(batches, attempts))  # and retries or hands back its own

    def current(self) -> tuple[int, float] | None:
        """Which of ``scoring`` the process is on (its index), and since when; None when it
        holds none, or has finished all it holds (its Scored are on their way)."""
        if not self.scoring:
            return None
        batch_id, when = self.board.last_finished()
        index = next((i + 1 for i, b in enumerate(self.scoring) if b.batch_id == batch_id), 0)
        if index == len(self.scoring):
            return None
        return index, max(when, self.started)

    def pending(self) -> bool:
        """Whether a message (or the end of the pipe) is there to read now."""
        return bool(self.listener.poll(0))

    @property
    def busy(self) -> bool:
        """Whether the process holds a batch it has not finished."""
        return bool(self.scoring or self.writing)

    def release(self) -> list[Batch]:
        """Forget (and return) every batch the process holds, the one it is on first
        (:meth:`current`)."""
        on = self.current()
        if on is not None and on[0]:
            self.scoring.rotate(-on[0])
        batches = [*self.scoring, *self.writing.values()]
        self.unsent.clear()
        self.scoring.clear()
        self.writing.clear()
        return batches

    def take(self, batch_id: int) -> Batch:
        """Remove a batch the process reports on; the next one's scoring starts now (or
        started when the Scoreboard says: its Scored may have waited)."""
        if self.scoring and self.scoring[0].batch_id == batch_id:
            self.started = time.monotonic()
            return self.scoring.popleft()
        return self.writing.pop(batch_id)

    def alive(self) -> bool:
        return self.process.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def exit_text(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def kill(self) -> None:
        self.process.kill()
        self.join(5)
        self.conn.close()
        self.board.close()
