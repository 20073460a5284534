"""What happened: per-rank statistics, progress lines, the run directory's files."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .placement import describe_slurm, slurm_ids
from .tuning import SCORING_DEPTH

if TYPE_CHECKING:
    from .config import JobConfig

LOG = logging.getLogger("mpiscore")


@dataclass(frozen=True)
class RankStats:
    """One rank's share of the work and how it spent its time.

    ``driver_cpu_seconds`` is the CPU time of the rank's own MPI process (which
    never scores); ``loop_cpu_seconds`` the part of it spent in the scoring loop
    over ``loop_seconds`` of wall time, coordinating and waiting: what waiting costs.
    """

    rank: int
    host: str
    batches: int
    rows: int
    failures: int
    read_seconds: float
    score_seconds: float
    write_seconds: float
    driver_cpu_seconds: float
    scorer_cpu_seconds: float
    scorer_peak_rss_mib: float
    loop_seconds: float
    loop_cpu_seconds: float
    startup_seconds: float
    first_batch_seconds: float | None
    scorer_restarts: int
    intra_op_threads: int
    # the GPU its sessions are given (device_id: placement.scorer_settings), as
    # CUDA_VISIBLE_DEVICES names it (else the node); None where the rank sees none. Only a device
    # provider (--providers CUDAExecutionProvider,...) uses it.
    gpu: str | None = None
    # its scoring processes whose ONNX session was opened from the model's path before
    # the job came, and kept as the job's (wire.Preopen)
    preopened_sessions: int = 0
    # batches each of its scoring processes came to hold, not reported scored, at most:
    # tuning.SCORING_DEPTH, more where batches were short (rank/pool.py deepen)
    scoring_depth: int = SCORING_DEPTH
    # rows each of its scoring processes gave an ONNX session per run, as measured or
    # --run-rows chose (0: whole batches; scoring/scorers/run_rows.py)
    run_rows: tuple[int, ...] = ()
    # its entry script's shutdown() calls that raised or did not return, in a line each
    shutdown_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    """The job's summary, as written to ``summary.json``."""

    status: str  # complete | stopped | failed
    stop_reason: str | None
    error: str | None  # when failed: the MpiscoreError class the job ended with
    first_failure: str | None
    output: str  # the output as it is now: OUTPUT when complete, else OUTPUT.partial
    run_dir: str
    rows: int
    rows_scored: int  # by this run (less than rows when resuming)
    batches: int
    batches_done: int
    batches_failed: int
    rows_failed: int
    ranks: int
    wall_seconds: float
    setup_seconds: float
    rows_per_second: float
    per_rank: list[RankStats]
    slurm: dict | None = None  # placement.slurm_ids(): job, array and restart ids
    job: dict | None = None  # the job's totals over its runs (history.jsonl), this one included

    def to_json(self) -> dict:
        return asdict(self)


HISTORY = "history.jsonl"


def append_history(run_dir: Path, report: RunReport) -> dict:
    """Add this run's line to ``RUN_DIR/history.jsonl`` (one JSON object per run of the
    job: requeues and resumes append, a fresh job starts it anew); the job's totals."""
    firsts = [s.first_batch_seconds for s in report.per_rank
              if s.first_batch_seconds is not None]
    return _append_run(run_dir, {
        "status": report.status, "stop_reason": report.stop_reason,
        "rows_scored": report.rows_scored, "batches_done": report.batches_done,
        "wall_seconds": report.wall_seconds, "setup_seconds": report.setup_seconds,
        "first_batch_seconds": max(firsts) if firsts else None, "ranks": report.ranks,
        "slurm": report.slurm})


# How long rank 0's first scoring process waits, as its rank dies, for the other ranks'
# notes of their deaths (the launcher ends them all within milliseconds of each other).
DEATH_NOTES_SECONDS = 0.2


def note_death(run_dir: Path, rank: int, where: str, when: float) -> None:
    """Note in ``RUN_DIR/logs`` that ``rank`` died at ``when`` (its first scoring process
    writes it as its rank dies), so that rank 0's line can name the other ranks that
    died and when: the launcher kills every rank after one dies, and rank 0's would name
    only itself. Which rank died first is the launcher's to say (its output names the
    process that ended first): each note's time is when its scoring process ran, which
    a loaded node delays by more than the launcher takes to end the others."""
    _death_note(run_dir, rank).write_text(json.dumps({"where": where, "time": when}))


def forget_death(run_dir: Path, rank: int) -> None:
    """Remove an earlier run's note of ``rank``'s death (a resumed job's)."""
    _death_note(run_dir, rank).unlink(missing_ok=True)


def _death_note(run_dir: Path, rank: int) -> Path:
    return run_dir / "logs" / f"rank-{rank:05d}.died"


def death_reason(run_dir: Path, where: str, when: float, output: str) -> str:
    """Why the job died, for rank 0's last line: ``where`` (rank 0) was killed at
    ``when``; and the earliest of the other ranks' noted deaths, how long before or
    after it."""
    notes = [note for path in (run_dir / "logs").glob("rank-*.died")
             if (note := read_json_object(path)) and isinstance(note.get("time"), float)
             and isinstance(note.get("where"), str)]
    others = ""
    if notes:
        first = min(notes, key=lambda note: note["time"])
        gap = 1000 * (when - first["time"])
        lead = f"{first['where']} died too" if len(notes) == 1 else \
            f"of {len(notes)} other ranks that died, {first['where']} was first"
        others = f"; {lead}, {abs(gap):.0f} ms {'before' if gap >= 0 else 'after'} it"
    return (f"{where} was killed while the job ran{others} (by a signal, out of memory, or "
            f"by the MPI launcher after another rank died); {output} stays partial: rerun "
            "with --resume")


def record_death(run_dir: Path, output: str, reason: str) -> bool:
    """Record in the run directory that the job died (its rank was killed), ``output``
    left partial: the run's line in ``history.jsonl`` and a ``summary.json`` saying
    "died", with what this run's files tell (the start in the running summary, rank
    0's last ``status.json``); whether it did (not if the job had ended already)."""
    summary = read_json_object(run_dir / "summary.json") or {}
    if summary.get("status") != "running":
        return False
    history = read_history(run_dir / HISTORY)
    if history and "started_at" in summary and \
            history[-1].get("run_started_at") == summary["started_at"]:
        _ended_unsummarized(run_dir, output, history)
        return False
    status = read_json_object(run_dir / "status.json") or {}
    if status.get("pid") != summary.get("pid"):
        status = {}  # none yet, or an earlier run's
    started, ready = _seconds(summary, "started_at"), _seconds(status, "started_at")
    ranks = status.get("ranks")
    job = _append_run(run_dir, {
        "status": "died", "stop_reason": reason, "rows_scored": status.get("rows_scored", 0),
        "batches_done": status.get("batches_done"),
        "wall_seconds": 0.0 if started is None else time.time() - started,
        # rank 0 writes its first status.json as scoring begins
        "setup_seconds": None if started is None or ready is None else ready - started,
        "first_batch_seconds": None, "ranks": len(ranks) if isinstance(ranks, list) else None,
        "slurm": summary.get("slurm")})
    write_json(run_dir / "summary.json", {"status": "died", "output": output,
                                          "stop_reason": reason, "job": job})
    return True


def _ended_unsummarized(run_dir: Path, output: str, history: list[dict]) -> None:
    """The run had ended, its line in the history, when its rank 0 was killed before the
    final summary: the summary says how it ended, from that line, instead of a second
    line saying "died"."""
    ended = history[-1]
    write_json(run_dir / "summary.json", {
        "status": ended["status"], "output": output, "stop_reason": ended.get("stop_reason"),
        "job": _totals(run_dir / HISTORY, history),
        "note": "rank 0 was killed after the run ended, before its full summary"})


def _seconds(record: dict, key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def read_json_object(path: Path) -> dict | None:
    """The object a JSON file of the run directory holds, or None where there is none
    (missing, torn or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _append_run(run_dir: Path, entry: dict) -> dict:
    """Append ``entry``, one run's line, to ``history.jsonl``; the job's totals.

    A torn line (a run killed while appending) is skipped, never merged with the next:
    each line is written whole, after a newline."""
    path = run_dir / HISTORY
    running = read_json_object(run_dir / "summary.json") or {}
    entry = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "run_started_at": running.get("started_at"), **entry}  # the run's own key
    runs = [*read_history(path), entry]
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        text = b""
    with path.open("a") as handle:
        handle.write(("\n" if text and not text.endswith(b"\n") else "")
                     + json.dumps(entry) + "\n")
    return _totals(path, runs)


def _totals(path: Path, runs: list[dict]) -> dict:
    """The job's totals over its runs."""
    return {"runs": len(runs), "wall_seconds": sum(r["wall_seconds"] for r in runs),
            "rows_scored": sum(r["rows_scored"] for r in runs), "history": str(path)}


def read_history(path: Path) -> list[dict]:
    """The runs ``history.jsonl`` lists, skipping lines that are not whole."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in lines:
        try:
            run = json.loads(line)
        except ValueError:
            continue
        if isinstance(run, dict) and isinstance(run.get("wall_seconds"), (int, float)) and \
                isinstance(run.get("rows_scored"), int):
            runs.append(run)
    return runs


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)  # no empty .tmp left behind by a full disk
        raise


class _RankLogFile(logging.FileHandler):
    """A rank's log file that a full disk or a file-size limit silences instead of
    filling stderr with logging's tracebacks: the job's own errors name the storage."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


def start_logging(run_dir: Path, rank: int, size: int, host: str, to_stderr: bool,
                  level: str = "info", quiet: bool = False) -> list[logging.Handler]:
    """Per-rank log file in ``run_dir/logs`` (none where the disk refuses one: the job
    then stops on that disk's error itself); rank 0 also logs to stderr, only
    warnings and errors if ``quiet``. ``level``: the lowest logged (--log-level)."""
    fmt = logging.Formatter(f"%(asctime)s rank {rank}/{size} {host}:%(process)d "
                            "%(levelname)s %(message)s")
    handlers: list[logging.Handler] = []
    with contextlib.suppress(OSError):
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(_RankLogFile(run_dir / "logs" / f"rank-{rank:05d}.log"))
    if to_stderr:
        stderr = logging.StreamHandler()
        stderr.setLevel(logging.WARNING if quiet else logging.NOTSET)
        handlers.append(stderr)
    for handler in handlers:
        handler.setFormatter(fmt)
        LOG.addHandler(handler)
    LOG.setLevel(level.upper())
    ids = slurm_ids()
    if ids:  # each rank log's first line says which Slurm job (and run of it) wrote it
        LOG.info("%s", describe_slurm(ids))
    return handlers


def stop_logging(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        LOG.removeHandler(handler)
        handler.close()


EARLY_HANDLER = "mpiscore-early"


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 scoring process``, ``2 scoring processes``, ``1,200 rows``."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def early_stderr(rank: int, size: int, host: str, quiet: bool = False) -> None:
    """Rank 0's progress lines on stderr from the start, before the run directory (and
    the rank's log file) exists; :func:`stop_early_stderr` hands over to :func:`start_logging`.
    Idempotent; other ranks say nothing here (their lines go to their log files)."""
    if quiet or rank != 0 or any(h.get_name() == EARLY_HANDLER for h in LOG.handlers):
        return
    handler = logging.StreamHandler()
    handler.set_name(EARLY_HANDLER)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank}/{size} {host}:%(process)d "
                                           "%(levelname)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)


def configure_early_stderr(config: JobConfig) -> None:
    """Once the options are known: --quiet ends the early lines, --log-level applies."""
    if config.quiet:
        stop_early_stderr()
    LOG.setLevel(config.log_level.upper())


def stop_early_stderr() -> None:
    for handler in [h for h in LOG.handlers if h.get_name() == EARLY_HANDLER]:
        LOG.removeHandler(handler)


def log_start(config: JobConfig, size: int, procs: int) -> None:
    """The job's first lines (rank 0), while its first scoring process prepares it."""
    model = config.scorer_file
    inputs = [f"{s.pattern}:{s.dataset}" if s.dataset else s.pattern for s in config.inputs]
    LOG.info("starting %s x %s", plural(size, "rank"),
             plural(procs, "scoring process", "scoring processes"))
    try:
        megabytes = f" ({size_text(model.stat().st_size)})"
    except OSError:
        megabytes = ""  # the check names what is wrong with it
    shown = ", ".join(inputs[:3]) + (f" ... and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    LOG.info("loading %s %s%s, checking the input %s, planning the batches",
             "model" if config.entry_script is None else "entry script", model, megabytes, shown)


def size_text(nbytes: float) -> str:
    """``12.3 MiB``, ``512 bytes``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:,.1f} {unit}"
    return f"{nbytes:.0f} bytes"
