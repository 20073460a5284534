"""What a dry run found, and what it makes of it: the wall time, core-hours and Slurm
``--time`` of the job for an allocation.

Pure: the numbers come from ``mpiscore score --dry-run`` (scoring/calibrate.py
measures a few real batches in one scoring process); this module only scales
them. The estimate says what it measured and what it assumes, because a scaled
measurement of a few seconds is only as good as its assumptions: throughput
that grows linearly with ranks and processes (no shared filesystem, memory
bandwidth or GPU limit), each process with the cores it had here, and writing
that overlaps scoring (the write-behind thread), so it is not measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SUGGESTED_FACTOR = 1.5  # --time = the estimate x this + SUGGESTED_MARGIN_SECONDS
SUGGESTED_MARGIN_SECONDS = 600
SUGGESTED_STEP_SECONDS = 300  # --time rounded up to this


@dataclass(frozen=True)
class Calibration:
    """A few real batches read and scored by a scoring process of every rank at once,
    nothing written (times summed over the processes).

    ``batches``/``rows``: those timed (the first, a warm-up, is left out when
    there are more); ``setup_seconds``: from the dry run's start until the
    first batch could be scored (launcher, imports, model load, checks, probe).
    """

    batches: int
    rows: int
    read_seconds: float
    score_seconds: float
    setup_seconds: float = 0.0
    threads: int = 1  # intra-op threads of each scoring process that was timed
    processes: int = 1  # timed at once, one per rank of the dry run

    @property
    def rows_per_second(self) -> float:
        """Items per second of one scoring process, reading and scoring."""
        return self.rows / max(self.read_seconds + self.score_seconds, 1e-9)


@dataclass(frozen=True)
class DryRun:
    """What the checks and the calibration found of a job."""

    files: int
    rows: int
    input_bytes: int
    batches: int
    batch_rows: int
    rows_done: int  # by an interrupted run, for --resume
    item: str  # "row", or "file" for file input
    output: str
    calibration: Calibration
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """The job's cost on ``ranks`` x ``procs_per_rank`` scoring processes."""

    ranks: int
    procs_per_rank: int
    threads: int
    setup_seconds: float
    scoring_seconds: float
    tail_seconds: float  # the last batch, which one process scores alone
    core_hours: float
    suggested_time: str
    assumptions: tuple[str, ...] = field(default=())

    @property
    def wall_seconds(self) -> float:
        return self.setup_seconds + self.scoring_seconds + self.tail_seconds


def estimate(dry: DryRun, ranks: int, procs_per_rank: int, threads: int) -> Estimate:
    """Scale the calibration to ``ranks`` x ``procs_per_rank`` processes of ``threads``
    cores each: the rows left at the measured rate per process times the processes,
    plus the measured set-up, plus one batch's time for the tail."""
    calibration = dry.calibration
    rate = calibration.rows_per_second
    processes = ranks * procs_per_rank
    left = dry.rows - dry.rows_done
    scoring = left / (rate * processes) if left else 0.0
    tail = min(dry.batch_rows, left) / rate if left and dry.batches > processes else 0.0
    wall = calibration.setup_seconds + scoring + tail
    return Estimate(ranks, procs_per_rank, threads, calibration.setup_seconds, scoring, tail,
                    wall * processes * threads / 3600, slurm_time(suggested_seconds(wall)),
                    _assumptions(calibration, threads))


def _assumptions(calibration: Calibration, threads: int) -> tuple[str, ...]:
    said = ["throughput grows linearly with ranks and processes (no shared-filesystem, "
            "network or memory-bandwidth limit)",
            "writing overlaps scoring, as it does in the job (it was not measured)"]
    if threads != calibration.threads:
        said.append(f"a process with {threads} threads is as fast as the one timed here "
                    f"with {calibration.threads} (more threads rarely scale linearly)")
    else:
        said.append(f"each process gets {threads} core{'s' * (threads != 1)}, as here")
    return tuple(said)


def suggested_seconds(wall: float) -> int:
    """A walltime request with room: the estimate x 1.5 + 10 min, in whole 5 minutes."""
    seconds = wall * SUGGESTED_FACTOR + SUGGESTED_MARGIN_SECONDS
    return math.ceil(seconds / SUGGESTED_STEP_SECONDS) * SUGGESTED_STEP_SECONDS


def slurm_time(seconds: int) -> str:
    """``HH:MM:SS``, or ``D-HH:MM:SS`` from a day on, as sbatch --time takes it."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def to_json(dry: DryRun, guess: Estimate) -> dict[str, Any]:
    """``--dry-run --json``: the plan, the calibration and the estimate (the keys
    ``rows``, ``batches``, ``estimated_wall_seconds``, ``estimated_core_hours`` and
    ``suggested_time`` are the interface)."""
    calibration = dry.calibration
    return {
        "rows": dry.rows, "batches": dry.batches, "files": dry.files,
        "input_bytes": dry.input_bytes, "batch_rows": dry.batch_rows,
        "rows_done": dry.rows_done, "item": dry.item, "output": dry.output,
        "calibration": {**asdict(calibration),
                        "rows_per_second": round(calibration.rows_per_second, 1)},
        "ranks": guess.ranks, "procs_per_rank": guess.procs_per_rank,
        "threads": guess.threads,
        "estimated_wall_seconds": round(guess.wall_seconds, 2),
        "estimated_setup_seconds": round(guess.setup_seconds, 2),
        "estimated_core_hours": round(guess.core_hours, 4),
        "suggested_time": guess.suggested_time,
        "assumptions": list(guess.assumptions), "warnings": list(dry.warnings),
    }


def describe(dry: DryRun, guess: Estimate) -> str:
    """The dry run for a person: what was checked, measured and assumed."""
    from .report import plural, size_text

    calibration, item = dry.calibration, dry.item
    cost = calibration.read_seconds + calibration.score_seconds
    read_share = 100 * calibration.read_seconds / max(cost, 1e-9)
    lines = [
        f"dry run: every check passed; nothing was written ({dry.output} left as it is)",
        f"plan: {plural(dry.files, 'file')}, {plural(dry.rows, item)} "
        f"({size_text(dry.input_bytes)}), {plural(dry.batches, 'batch', 'batches')} of <= "
        f"{dry.batch_rows:,} {item}s"
        + (f"; {dry.rows_done:,} done by an earlier run" if dry.rows_done else ""),
        f"calibration: {plural(calibration.batches, 'batch', 'batches')} "
        f"({plural(calibration.rows, item)}) read and scored in {cost:.2f}s, in all, by "
        f"{plural(calibration.processes, 'scoring process', 'scoring processes')} at once "
        f"(one per rank, each timing batches of the plan) with "
        f"{plural(calibration.threads, 'thread')} each: "
        f"{calibration.rows_per_second:,.0f} {item}s/s a process ({read_share:.0f}% reading); "
        f"set-up took {calibration.setup_seconds:.1f}s",
        f"estimate for {plural(guess.ranks, 'rank')} x "
        f"{plural(guess.procs_per_rank, 'scoring process', 'scoring processes')} "
        f"({plural(guess.threads, 'thread')} each): {guess.wall_seconds:,.1f}s wall "
        f"({guess.setup_seconds:.1f}s set-up + {guess.scoring_seconds:,.1f}s scoring + "
        f"{guess.tail_seconds:.1f}s last batch), {guess.core_hours:,.3f} core-hours",
        f"suggested Slurm --time: {guess.suggested_time} (the estimate x "
        f"{SUGGESTED_FACTOR:g} + {SUGGESTED_MARGIN_SECONDS // 60} min)",
        "assumes: " + "; ".join(guess.assumptions),
    ]
    return "\n".join([*lines, *(f"warning: {w}" for w in dry.warnings)])
