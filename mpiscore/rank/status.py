"""``RUN_DIR/status.json``: how far a job is, kept current by rank 0, read from anywhere.

Rank 0 replaces the file atomically every STATUS_SECONDS while it coordinates
(a time check on every turn of its loop, and on every completed batch), and
once more when scoring ends. :func:`job_status` reads it with ``summary.json``
(the job's end, or ``died``, written by rank 0's scoring process when the rank
is killed) and the age of ``RUN_DIR/lock`` (refreshed every 15 s while the
job runs, stale after 120 s), so it can tell a running job from one whose
heartbeat stopped, from any node that sees the filesystem.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..lock import pid_alive
from ..progress import Progress
from ..report import plural, read_json_object, write_json
from ..schedule import Scheduler
from ..tuning import STALE_SECONDS, STATUS_SECONDS

STATUS_FILE = "status.json"
RUNNING = ("running", "starting")
# what job_status always returns (README "Watching a job"), null where not known
KEYS = ("state", "rows_done", "rows", "rows_per_second", "eta_seconds", "batches_done",
        "batches", "batches_failed", "batches_retried", "failures", "ranks", "updated_at",
        "heartbeat_at", "stop_reason", "output")


class StatusFile:
    """Rank 0's writer of ``status.json``: cheap to call often, writes every few seconds."""

    def __init__(self, run_dir: Path, scheduler: Scheduler, progress: Progress,
                 heard: dict[int, float], ranks: int, rows: int, batches: int,
                 every: float = STATUS_SECONDS) -> None:
        self.path, self.scheduler, self.progress = run_dir / STATUS_FILE, scheduler, progress
        self.heard, self.ranks, self.rows, self.batches = heard, ranks, rows, batches
        self.every, self.last = every, 0.0
        self.before = rows - progress.total_rows  # rows done by an earlier run (--resume)
        self.started = time.time()

    def tick(self) -> None:
        """Write the status if STATUS_SECONDS have passed since the last write."""
        if time.monotonic() - self.last >= self.every:
            self.write("running")

    def write(self, state: str) -> None:
        self.last = time.monotonic()
        with contextlib.suppress(OSError):  # advisory: the journal reports a failing disk
            write_json(self.path, self.snapshot(state))

    def snapshot(self, state: str) -> dict[str, Any]:
        scheduler, progress = self.scheduler, self.progress
        elapsed = max(time.perf_counter() - progress.started, 1e-9)
        rate = progress.rows / elapsed
        done = self.before + progress.rows
        left = self.rows - done - scheduler.failed_rows
        flying: dict[int, list[int]] = {}
        for batch_id, (_, rank) in scheduler.in_flight.items():
            flying.setdefault(rank, []).append(batch_id)
        retried = sum(1 for batch_id, tries in scheduler.attempts.items()
                      if tries and (batch_id not in scheduler.failed or len(tries) > 1))
        return {
            "state": state, "rows_done": done, "rows": self.rows,
            "rows_scored": progress.rows,  # by this run (report.record_death counts them)
            "rows_per_second": rate,
            "eta_seconds": None if state not in RUNNING or rate <= 0 else max(0.0, left / rate),
            "batches_done": len(scheduler.completed), "batches": self.batches,
            "batches_failed": len(scheduler.failed), "batches_retried": retried,
            "failures": sum(len(tries) for tries in scheduler.attempts.values()),
            "stop_reason": scheduler.stop_reason,
            "ranks": [{"rank": rank, "last_heard": self.heard.get(rank),
                       "batches_in_flight": sorted(flying.get(rank, []))}
                      for rank in range(self.ranks)],
            "host": socket.gethostname(), "pid": os.getpid(), "started_at": self.started,
            "updated_at": time.time(),
        }


def job_status(run_dir: Path, now: float | None = None) -> dict[str, Any]:
    """The job's state from the files of its run directory (never from the job itself).

    ``state``: starting, running, complete, stopped, failed, died (its rank was killed)
    or heartbeat-stopped (no sign of life for STALE_SECONDS, or its process is gone).
    Every key of KEYS is there, None where the files do not say. Raises InputError for
    a directory that holds no job's status."""
    now = time.time() if now is None else now
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a run directory (no such directory)")
    summary = read_json_object(run_dir / "summary.json")
    status = read_json_object(run_dir / STATUS_FILE)
    lock = _mtime(run_dir / "lock")
    if summary is None and status is None:
        if lock is not None:
            return _every_key(_starting(run_dir, lock, now))
        what = "a job's run directory" if (run_dir / "plan.json").exists() else \
            "a run directory"
        raise InputError(f"{run_dir}: no job status here (no summary.json or {STATUS_FILE}): "
                         f"not {what} whose job started scoring")
    summary = summary or {"status": "running"}
    if status is not None and summary.get("pid") not in (None, status.get("pid")):
        status = None  # an earlier run's: this run has not written its own yet
    info: dict[str, Any] = {"state": summary["status"], "run_dir": str(run_dir),
                            **_counters(run_dir, status)}
    beats = [t for t in (lock, _mtime(run_dir / STATUS_FILE) if status else None) if t]
    info["heartbeat_at"] = max(beats) if beats else _mtime(run_dir / "summary.json")
    if summary["status"] in ("complete", "stopped", "failed"):
        info.update(rows_done=summary["rows"] - summary["rows_failed"]
                    if summary["status"] == "complete" else info["rows_done"],
                    rows=summary["rows"], rows_per_second=summary["rows_per_second"],
                    eta_seconds=None, batches_done=summary["batches_done"],
                    batches_failed=summary["batches_failed"],
                    wall_seconds=summary["wall_seconds"])
    elif summary["status"] == "running" and _stopped(summary, info["heartbeat_at"], now):
        info["state"] = "heartbeat-stopped"
    if info["state"] not in RUNNING:
        info["eta_seconds"] = None
    info["stop_reason"] = summary.get("stop_reason") or info.get("stop_reason")
    info["output"] = summary.get("output")
    return _every_key(info)


def _starting(run_dir: Path, lock: float, now: float) -> dict[str, Any]:
    """A job that holds its lock but has no summary yet (it has not planned): starting,
    or killed while starting when the lock names a rank 0 gone from this host or has
    not been refreshed for STALE_SECONDS; the lock's mtime is its heartbeat."""
    owner = read_json_object(run_dir / "lock") or {}  # host and pid, as a summary has
    state = "heartbeat-stopped" if _stopped(owner, lock, now) else "starting"
    return {"state": state, "run_dir": str(run_dir), **_counters(run_dir, None),
            "heartbeat_at": lock}


def _every_key(info: dict[str, Any]) -> dict[str, Any]:
    return {**dict.fromkeys(KEYS), **info}


def _counters(run_dir: Path, status: dict[str, Any] | None) -> dict[str, Any]:
    if status is not None:
        return {key: value for key, value in status.items() if key != "state"}
    plan = read_json_object(run_dir / "plan.json") or {}
    batches = plan.get("batches")  # plan.json lists them; the job's attributes count them
    return {"rows_done": 0, "rows": plan.get("rows"), "rows_per_second": 0.0,
            "eta_seconds": None, "batches_done": 0,
            "batches": len(batches) if isinstance(batches, list) else batches}


def _stopped(summary: dict[str, Any], heartbeat: float | None, now: float) -> bool:
    """Whether a job its summary calls running has shown no sign of life for too long,
    or its rank 0 is seen gone (checkable on its own host only)."""
    if heartbeat is None or now - heartbeat > STALE_SECONDS:
        return True
    return (summary.get("host") == socket.gethostname() and isinstance(summary.get("pid"), int)
            and not pid_alive(summary["pid"]))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _when(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return f"{stamp} ({_duration(now - epoch)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe_status(info: dict[str, Any], now: float | None = None) -> str:
    """The status as text for people."""
    now = time.time() if now is None else now
    state, rows, done = info["state"], info.get("rows"), info.get("rows_done") or 0
    share = f" ({100 * done / rows:.1f}%)" if rows else ""
    line = f"{state}: {done:,} of {rows:,} rows{share}" if rows is not None else state
    if info.get("rows_per_second"):
        line += f", {info['rows_per_second']:,.0f} rows/s"
    if info.get("eta_seconds") is not None:
        line += f", ETA {_duration(info['eta_seconds'])}"
    lines = [line]
    if info.get("batches") is not None:
        lines.append(f"batches: {info.get('batches_done') or 0:,} of {info['batches']:,} done, "
                     f"{info.get('batches_failed') or 0:,} failed, "
                     f"{info.get('batches_retried') or 0:,} retried")
    if state == "died" or state == "heartbeat-stopped":
        # no output named: no summary, so it never planned (killed while starting)
        after = "the output stays partial: rerun with --resume" if info.get("output") else \
            "it stopped before scoring: run it again"
        lines.append(f"heartbeat stopped at {_when(info.get('heartbeat_at'), now)}; {after}")
    elif state in RUNNING:
        lines.append(f"updated {_when(info.get('updated_at'), now)}; "
                     f"heartbeat {_when(info.get('heartbeat_at'), now)}")
    if info.get("stop_reason"):
        lines.append(f"reason: {info['stop_reason']}")
    if state in RUNNING:
        for rank in info.get("ranks") or []:
            flying = rank["batches_in_flight"]
            shown = ", ".join(map(str, flying[:6])) + (" ..." if len(flying) > 6 else "")
            lines.append(f"  rank {rank['rank']}: last heard {_when(rank['last_heard'], now)}; "
                         f"{plural(len(flying), 'batch', 'batches')} in flight"
                         + (f" ({shown})" if flying else ""))
    lines.append(f"run directory: {info['run_dir']}")
    return "\n".join(lines)
