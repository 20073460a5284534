"""Rank 0's live progress: a bar on a terminal, a plain line every few seconds elsewhere.

A Slurm output file or a pipe gets lines without carriage returns or escape
codes; a terminal gets a bar (rich) with rows or files done, rate, ETA,
failures and retries, and the ranks busy. ``--progress auto`` decides by
whether rank 0's stderr is a terminal, which it is not under ``mpiexec``
(Hydra passes output through pipes): ``--progress bar`` draws it anyway, and
``--quiet`` shows neither. The log lines the job writes meanwhile appear above
the bar.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

LOG = logging.getLogger("mpiscore")
BAR_REFRESH_SECONDS = 0.25


class Activity(NamedTuple):
    """What the coordinator knows besides rows done: for the bar."""

    failed: int  # batches given up
    retried: int  # failed tries that were retried
    busy_ranks: int


class Progress:
    """Counts completed rows on the coordinator and shows them (lines, a bar, or not)."""

    def __init__(self, total_rows: int, total_batches: int, every_seconds: float,
                 item: str = "row", mode: str = "lines",
                 activity: Callable[[], Activity] | None = None) -> None:
        """``mode``: "lines", "bar" or "none"; ``activity``: the coordinator's counts."""
        self.total_rows, self.total_batches, self.every = total_rows, total_batches, every_seconds
        self.item, self.activity = item, activity or (lambda: Activity(0, 0, 0))
        self.rows = self.batches = 0
        self.started = self.last = time.perf_counter()
        self.bar = _Bar(total_rows, item) if mode == "bar" else None
        self.lines = mode == "lines"

    def __call__(self, rows: int, batches: int = 1) -> None:
        self.rows += rows
        self.batches += batches
        self.tick()

    def tick(self) -> None:
        """Show progress if it is time (also between completions: a bar's rate moves)."""
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.show(self.rows, self.batches, self.total_batches, self.activity)
        elif self.lines and now - self.last >= self.every:
            self.last = now
            rate = self.rows / max(now - self.started, 1e-9)
            eta = (self.total_rows - self.rows) / max(rate, 1e-9)
            LOG.info("progress: %d/%d batches, %d/%d %ss (%.1f%%), %.0f %ss/s, eta %.0fs",
                     self.batches, self.total_batches, self.rows, self.total_rows, self.item,
                     100 * self.rows / max(1, self.total_rows), rate, self.item, eta)

    def close(self) -> None:
        """Leave the terminal as it was (the bar's last state stays on screen)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_mode(requested: str, quiet: bool, rank: int) -> str:
    """"bar", "lines" or "none" for this rank: only rank 0 shows progress; auto draws a
    bar when its stderr is a terminal."""
    if quiet or rank != 0:
        return "none"
    if requested == "auto":
        return "bar" if sys.stderr.isatty() else "lines"
    return requested


class _Bar:
    """A rich progress bar on stderr; the job's stderr log lines print above it."""

    def __init__(self, total: int, item: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True, force_terminal=True)  # --progress bar: asked
        self.progress = RichProgress(
            TextColumn("[bold]scoring"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TextColumn(f"{item}s"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[activity]}"),
            console=self.console, refresh_per_second=1 / BAR_REFRESH_SECONDS,
            redirect_stderr=True, redirect_stdout=False)
        self.item, self.total, self.started, self.shown = item, total, time.perf_counter(), 0.0
        self.task = self.progress.add_task("scoring", total=total, rate="", activity="")
        self.progress.start()
        self.handlers = _follow_stderr()  # the log's stderr lines go above the bar

    def show(self, rows: int, batches: int, total_batches: int,
             counts: Callable[[], Activity]) -> None:
        now = time.perf_counter()
        if now - self.shown < BAR_REFRESH_SECONDS and rows < self.total:
            return
        self.shown, activity = now, counts()
        rate = rows / max(now - self.started, 1e-9)
        said = [f"{batches}/{total_batches} batches", f"{activity.busy_ranks} ranks busy"]
        if activity.retried:
            said.append(f"{activity.retried} retried")
        if activity.failed:
            said.append(f"[red]{activity.failed} failed[/red]")
        self.progress.update(self.task, completed=rows, rate=f"{rate:,.0f} {self.item}s/s",
                             activity=", ".join(said))

    def close(self) -> None:
        self.progress.stop()
        _restore_stderr(self.handlers)


def _follow_stderr() -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point the log's stderr handlers at ``sys.stderr`` as it is now (rich's proxy,
    which prints above the bar); what they wrote to before, to restore."""
    moved = []
    for handler in LOG.handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            before = handler.setStream(sys.stderr)
            if before is not None:  # None: it wrote there already
                moved.append((handler, before))
    return moved


def _restore_stderr(moved: list[tuple[logging.StreamHandler[Any], Any]]) -> None:
    for handler, stream in moved:
        handler.setStream(stream)
