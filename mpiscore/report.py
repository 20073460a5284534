"""What happened: per-rank statistics, progress lines, the run directory's files."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOG = logging.getLogger("mpiscore")


@dataclass(frozen=True)
class RankStats:
    """One rank's share of the work and how it spent its time."""

    rank: int
    host: str
    batches: int
    rows: int
    busy_seconds: float
    idle_seconds: float
    idle_cpu_seconds: float
    read_seconds: float
    score_seconds: float
    write_seconds: float
    process_cpu_seconds: float
    first_batch_seconds: float | None
    intra_op_threads: int


@dataclass(frozen=True)
class RunReport:
    """The job's summary, as written to ``summary.json``."""

    status: str
    output: str
    run_dir: str
    rows: int
    batches: int
    ranks: int
    wall_seconds: float
    setup_seconds: float
    rows_per_second: float
    coordinator_cpu_seconds: float
    per_rank: list[RankStats]

    def to_json(self) -> dict:
        return asdict(self)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


class Progress:
    """Counts completed rows on the coordinator and logs a line every few seconds."""

    def __init__(self, total_rows: int, total_batches: int, rows_by_batch: dict[int, int],
                 every_seconds: float) -> None:
        self.total_rows, self.total_batches = total_rows, total_batches
        self.rows_by_batch, self.every = rows_by_batch, every_seconds
        self.rows = self.batches = 0
        self.started = self.last = time.perf_counter()

    def __call__(self, batch_id: int) -> None:
        self.rows += self.rows_by_batch[batch_id]
        self.batches += 1
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.rows / max(now - self.started, 1e-9)
            eta = (self.total_rows - self.rows) / max(rate, 1e-9)
            LOG.info("progress: %d/%d batches, %d/%d rows (%.1f%%), %.0f rows/s, eta %.0fs",
                     self.batches, self.total_batches, self.rows, self.total_rows,
                     100 * self.rows / self.total_rows, rate, eta)


def start_logging(run_dir: Path, rank: int, size: int, host: str, to_stderr: bool
                  ) -> list[logging.Handler]:
    """Per-rank log file in ``run_dir/logs``; rank 0 also logs to stderr."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s rank {rank}/{size} {host} %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "logs" /
                                                           f"rank-{rank:05d}.log")]
    if to_stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handlers


def stop_logging(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        LOG.removeHandler(handler)
        handler.close()
