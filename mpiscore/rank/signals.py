"""SIGTERM/SIGINT/SIGHUP on a rank: the first asks for a graceful stop, the second stops
at once.

SIGHUP comes when the terminal or ssh session that started ``mpiexec`` closes:
a job worth hours is drained like a Slurm stop, not killed (to keep it running
instead, start it under ``nohup``, ``setsid`` or a batch script).

Slurm sends SIGTERM to every task before the walltime limit and on
preemption, and mpiexec forwards SIGTERM/SIGINT to the ranks. The first
signal only sets a flag that the rank's loop turns into a stop request; the
second exits immediately (the scoring processes die with their rank), which
makes the launcher end the whole job.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_early: list[str] = []  # signals that came before StopSignals took over (this process only)


def catch_early() -> None:
    """The first stage, installed by the entry point before anything else is imported:
    a signal during start-up (imports, MPI start-up, planning, model loading) is only
    recorded, so it can never kill the rank with a traceback or leave a half-made
    job; :class:`StopSignals` takes it over when scoring starts, and the job stops
    cleanly there (exit 75, resumable). A second signal stops at once, as later."""
    for signum in HANDLED:
        signal.signal(signum, _record_early)


def _record_early(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _early:
        os.write(2, f"mpiscore: second {name} during start-up: stopping now\n".encode())
        os._exit(128 + signum)
    _early.append(f"{name} during start-up")


def early_stop() -> str | None:
    """The stop signal that came during start-up, if one did: the waits of the start-up
    look at it, so that a scoring process that never gets ready (an entry script's
    init() that does not return) cannot hold the job past the stop."""
    return _early[0] if _early else None


class StopSignals:
    """Context manager that installs the two-stage handlers and restores the old ones."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in HANDLED:
            self.previous[signum] = signal.signal(signum, self._handle)
        if _early and self.received is None:  # came during start-up: stop now
            self.received = f"{_early[0]} on {self.where}"
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            os.write(2, f"mpiscore: second {name} on {self.where}: stopping now\n".encode())
            os._exit(128 + signum)
        self.received = f"{name} on {self.where}"

    def requested(self) -> str | None:
        """Why a stop was asked for, or None."""
        return self.received
