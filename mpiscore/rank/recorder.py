"""A rank's recorder: each try of a batch and a resource sample every ``--monitor-seconds``,
into the rank's events file (the format and its reader: events.py).

The pool (pool.py) tells it when it hands a batch to a scoring process, when
that process says it is scored, and how the try ended; it keeps the times as
``time.monotonic()`` and writes them as the epoch through one offset taken at
the start, so a clock step in the middle of the job cannot tear a batch.
Samples read ``/proc/PID/stat`` (CPU) and ``/proc/PID/status`` (VmRSS) of the
rank and of each of its scoring processes: no dependency, a few microseconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..events import EventLog, events_path, sample_record, start_record, try_line
from ..plan import Batch
from ..wire import StageSeconds

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Recorder:
    """One rank's events; cheap to call on every turn of the rank's loop."""

    def __init__(self, run_dir: Path, rank: int, run: str, procs: int, fresh: bool,
                 monitor_seconds: float, scorer_pids: Callable[[], Iterable[int]]) -> None:
        self.log = EventLog(events_path(run_dir, rank), fresh)
        self.log.add(start_record(run, rank, socket.gethostname(), procs))
        self.epoch = time.time() - time.monotonic()
        self.pending: dict[int, tuple[int, int, float, float | None]] = {}
        # ended tries, made records only when the file is written: formatting them together
        # costs a fraction of what it costs one at a time between a rank's waits
        self.ended_tries: list[tuple[int, Batch, int, str, float, float | None, float,
                                     StageSeconds | None]] = []  # lane, batch, try, out, times
        self.every, self.scorer_pids = monitor_seconds, scorer_pids
        self.cpu_seen: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self.next_check = time.monotonic()
        self.sampled = time.monotonic()
        if monitor_seconds > 0:
            self._sample(self.sampled)  # a baseline: CPU % needs two readings

    def sent(self, lane: int, batch: Batch, attempt: int) -> None:
        self.pending[batch.batch_id] = (lane, attempt, time.monotonic(), None)

    def scored(self, batch_id: int) -> None:
        if (held := self.pending.get(batch_id)) is not None:
            self.pending[batch_id] = (*held[:3], time.monotonic())

    def ended(self, batch: Batch, outcome: str, times: StageSeconds | None = None) -> None:
        """A try ended: ``outcome`` is ok, failed, returned or abandoned (events.py)."""
        held = self.pending.pop(batch.batch_id, None)
        if held is not None:
            lane, attempt, sent, scored = held
            self.ended_tries.append((lane, batch, attempt, outcome, sent, scored,
                                     time.monotonic(), times))

    def _add_tries(self) -> None:
        """The ended tries as records in the log, in the order they ended."""
        tries, self.ended_tries = self.ended_tries, []
        at, add = self.epoch, self.log.add_line
        for lane, batch, attempt, outcome, sent, scored, end, times in tries:
            add(try_line(lane, batch.batch_id, attempt, batch.rows, outcome,
                         (sent + at, None if scored is None else scored + at, end + at), times))

    def tick(self) -> None:
        """Flush and sample when due; one clock read otherwise."""
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + (min(0.5, self.every) if self.every > 0 else 0.5)
        if self.every > 0 and now - self.sampled >= self.every:
            self._sample(now)
        if self.log.due(now):
            self._add_tries()
            self.log.flush()

    def close(self) -> None:
        """A last sample (a job shorter than one interval still gets one), and flush."""
        if self.every > 0:
            self._sample(time.monotonic())
        self._add_tries()
        self.log.close()

    def _sample(self, now: float) -> None:
        elapsed, self.sampled = max(now - self.sampled, 1e-6), now
        own_pid = os.getpid()
        pids = [pid for pid in self.scorer_pids() if pid]
        usage = {pid: read_usage(pid) for pid in (own_pid, *pids)}
        cpu: dict[int, float] = {}
        for pid, (seconds, _) in usage.items():
            cpu[pid] = 100 * max(0.0, seconds - self.cpu_seen.get(pid, 0.0)) / elapsed
        first = not self.cpu_seen
        self.cpu_seen = {pid: seconds for pid, (seconds, _) in usage.items()}
        if first:
            return  # the baseline
        self._add_tries()  # the records stay in time order
        self.log.add(sample_record(cpu[own_pid], usage[own_pid][1],
                                   sum(cpu[pid] for pid in pids),
                                   sum(usage[pid][1] for pid in pids), len(pids)))


def read_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and resident MiB of a process, from /proc (0 if gone)."""
    cpu = rss = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                break
    return cpu, rss
