"""The run directory's events: what each batch did where and when, and how busy each rank was.

Both ends of the file live here: :class:`EventLog` (written by every rank, in
its own file, so nothing funnels through rank 0) and :func:`read_events` (read
by ``mpiscore report``). One JSON object per line, buffered and appended every
FLUSH_SECONDS, so recording costs the job a few microseconds per batch:

    {"k": "start", "t": T, "rank": R, "host": H, "procs": K}         a run begins on rank R
    {"k": "b", "rank": R, "proc": P, "id": B, "try": A, "rows": N,   one try of batch B
     "read": [T0, T1], "score": [T0, T1], "write": [T0, T1], "out": "ok"}
    {"k": "s", "t": T, "rank": R, "cpu": PCT, "rss": MIB,              a resource sample
     "scorers_cpu": PCT, "scorers_rss": MIB}

``out`` is ``ok``, ``failed`` (the try failed; the batch may be retried),
``returned`` (handed back unscored at a stop) or ``abandoned`` (killed past the
stop's grace period). A failed, returned or abandoned try has only
``"span": [T0, T1]``, as the rank saw it. Times are seconds since the epoch.
A line torn by a kill is skipped on reading, never merged with the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

EVENTS_DIR = "events"
START_SPREAD_SECONDS = 60.0  # ranks of one run start at most this far apart
FLUSH_SECONDS = 2.0  # how stale the file may be: mpiscore report on a running job sees this much


def events_path(run_dir: Path, rank: int) -> Path:
    return run_dir / EVENTS_DIR / f"rank-{rank:05d}.jsonl"


class EventLog:
    """One rank's events file, appended in buffered chunks; silent when the disk refuses it
    (the job's own writes then stop it on that disk's error, with the path)."""

    def __init__(self, run_dir: Path, rank: int, host: str, procs: int,
                 fresh: bool = False) -> None:
        self.rank = rank
        self.buffer: list[str] = []
        self.flushed = time.monotonic()
        self.handle: TextIO | None = None
        path = events_path(run_dir, rank)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh:
                path.unlink(missing_ok=True)
            self.handle = path.open("a")
        self.add({"k": "start", "t": time.time(), "rank": rank, "host": host, "procs": procs})

    def batch(self, proc: int, batch_id: int, attempt: int, rows: int, outcome: str,
              stages: dict[str, tuple[float, float]]) -> None:
        """One try of a batch; ``stages``: read/score/write (start, end), or a "span"."""
        record: dict[str, Any] = {"k": "b", "rank": self.rank, "proc": proc, "id": batch_id,
                                  "try": attempt, "rows": rows, "out": outcome}
        record.update({name: [round(a, 6), round(b, 6)] for name, (a, b) in stages.items()})
        self.add(record)

    def sample(self, cpu: float, rss: float, scorers_cpu: float, scorers_rss: float) -> None:
        self.add({"k": "s", "t": round(time.time(), 3), "rank": self.rank,
                  "cpu": round(cpu, 1), "rss": round(rss, 1),
                  "scorers_cpu": round(scorers_cpu, 1), "scorers_rss": round(scorers_rss, 1)})

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(json.dumps(record, separators=(",", ":")))
        if time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.monotonic()
        lines, self.buffer = self.buffer, []
        if self.handle is None or not lines:
            return
        try:
            self.handle.write("\n".join(lines) + "\n")
            self.handle.flush()
        except OSError:
            self._give_up()

    def close(self) -> None:
        self.flush()
        self._give_up()

    def _give_up(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()


@dataclass
class Events:
    """A run's events from every rank's file: its last run only (a resumed job appends)."""

    started: float
    batches: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lanes: dict[int, int] = field(default_factory=dict)  # rank -> scoring processes
    hosts: dict[int, str] = field(default_factory=dict)


def read_events(run_dir: Path) -> Events | None:
    """The last run's events, or None when the run directory has none."""
    files = sorted((run_dir / EVENTS_DIR).glob("rank-*.jsonl"))
    records = [record for path in files for record in _records(path)]
    starts = [r for r in records if r.get("k") == "start"]
    if not starts:
        return None
    # the last run began with rank 0's last start (another rank's may be a little earlier:
    # its ranks start within seconds of one another, and an earlier run ended before it)
    began = max(r["t"] for r in starts if r.get("rank") == 0) if any(
        r.get("rank") == 0 for r in starts) else max(r["t"] for r in starts)
    since = began - START_SPREAD_SECONDS
    events = Events(started=min(r["t"] for r in starts if r["t"] >= since))
    for record in records:
        kind = record.get("k")
        if kind == "start" and record["t"] >= since:
            events.lanes[record["rank"]] = record.get("procs", 1)
            events.hosts[record["rank"]] = record.get("host", "")
        elif kind == "b" and begins(record) >= since:
            events.batches.append(record)
        elif kind == "s" and record.get("t", 0) >= since:
            events.samples.append(record)
    return events


def ends(record: dict[str, Any]) -> float:
    """When a batch's try ended (its write, or its span as the rank saw it)."""
    return float((record.get("write") or record.get("span") or [0.0, 0.0])[1])


def begins(record: dict[str, Any]) -> float:
    """When a batch's try began (its read, or its span as the rank saw it)."""
    return float((record.get("read") or record.get("span") or [0.0])[0])


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines: Iterable[str] = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill
        if isinstance(record, dict):
            yield record


def process_usage(pids: Iterable[int]) -> tuple[float, float]:
    """CPU seconds (user + system) and resident MiB of processes, from /proc (0 where gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    cpu = rss = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            rss += int(fields[21]) * page
    return cpu, rss
