"""The run directory's job files, written by rank 0: at the start, and with the summary.

At the start: ``plan.json``, the fingerprint (journal.py: what ``--resume``
checks), ``config.toml`` (``--config RUN_DIR/config.toml`` reruns or resumes
the job) and a ``summary.json`` saying "running", so no earlier summary
remains until the job ends. At the end: ``failed_batches.json``, this run's
line in ``history.jsonl`` and the final ``summary.json``. The rank logs
(report.py) and ``status.json`` (status.py) have owners of their own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import storage_error
from ..jobfile import write_config
from ..journal import FINGERPRINT
from ..placement import slurm_ids
from ..report import HISTORY, RunReport, append_history, write_json

if TYPE_CHECKING:
    from pathlib import Path

    from ..job import Job


def create_run_dir(job: Job) -> None:
    """The run directory as a job starts; a write that fails is a storage error."""
    run_dir = job.config.resolved_run_dir
    try:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "plan.json", {**job.attrs, **job.plan.to_json()})
        write_json(run_dir / FINGERPRINT, job.fingerprint)
        write_config(run_dir, job.config)  # rerun or resume it: --config RUN_DIR/config.toml
        # replaced when the job ends; until then no earlier summary remains
        owner = job.lock.owner
        write_json(run_dir / "summary.json",
                   {"status": "running", "output": str(job.config.output),
                    "host": owner.host, "pid": owner.pid, "slurm": slurm_ids(),
                    "lock": [str(path) for path in job.lock.paths]})
        if not job.config.resume:  # a fresh job: its own runs only (report.append_history)
            (run_dir / HISTORY).unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(run_dir, exc, "cannot write the run directory") from exc


def record_run(run_dir: Path, report: RunReport, failed: list[dict[str, Any]]
               ) -> tuple[RunReport, bool]:
    """Write the run's end into its run directory: the report with the job's totals, and
    whether it was written.

    A summary that cannot be written ends the job with a StorageError/OutputError
    naming it, as the report's ``error``, rather than raising on rank 0 alone."""
    try:
        write_json(run_dir / "failed_batches.json", {"failed": failed})
        report = replace(report, job=append_history(run_dir, report))  # this run's line
        write_json(run_dir / "summary.json", report.to_json())
    except OSError as exc:
        error = storage_error(run_dir / "summary.json", exc, "cannot write the job's summary")
        kept = "is complete" if report.status == "complete" else "stays partial"
        first = f"{report.stop_reason}; also " if report.error else ""
        return replace(report, status="failed", error=report.error or type(error).__name__,
                       stop_reason=f"{first}{error} ({report.output} {kept})"), False
    return report, True
