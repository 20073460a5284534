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


class StopSignals:
    """Context manager that installs the two-stage handlers and restores the old ones."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in HANDLED:
            self.previous[signum] = signal.signal(signum, self._handle)
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
