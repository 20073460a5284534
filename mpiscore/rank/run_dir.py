"""The run directory's job files, written by rank 0: at the start, and with the summary.

At the start: ``plan.json`` (on a thread of its own, while scoring begins: a
million batches take seconds to write), the fingerprint (journal.py: what ``--resume``
checks), ``config.toml`` (``--config RUN_DIR/config.toml`` reruns or resumes
the job) and a ``summary.json`` saying "running", so no earlier summary
remains until the job ends. At the end: ``failed_batches.json``, this run's
line in ``history.jsonl`` and the final ``summary.json``. The rank logs
(report.py) and ``status.json`` (status.py) have owners of their own.
"""

from __future__ import annotations

import json
import os
import threading
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
    from ..plan import Plan

PLAN_CHUNK = 8192  # batches encoded at a time: the thread lets the coordinator run between


def create_run_dir(job: Job, started_at: float) -> PlanFile:
    """The run directory as a job starts (at ``started_at``, seconds since the epoch);
    a write that fails is a storage error.

    ``plan.json`` is written by the returned PlanFile's thread (rank 0 checks on it
    and waits for it before the job ends)."""
    run_dir = job.config.resolved_run_dir
    try:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / FINGERPRINT, job.fingerprint)
        write_config(run_dir, job.config)  # rerun or resume it: --config RUN_DIR/config.toml
        # replaced when the job ends; until then no earlier summary remains
        owner = job.lock.owner
        write_json(run_dir / "summary.json",
                   {"status": "running", "output": str(job.config.output),
                    "host": owner.host, "pid": owner.pid, "slurm": slurm_ids(),
                    "started_at": started_at,  # report.record_death: a died run's wall time
                    "lock": [str(path) for path in job.lock.paths]})
        if not job.config.resume:  # a fresh job: its own runs only (report.append_history)
            (run_dir / HISTORY).unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(run_dir, exc, "cannot write the run directory") from exc
    return PlanFile(run_dir / "plan.json", job.attrs, job.plan)


class PlanFile:
    """``plan.json``, written on a thread while the job starts scoring: the job's
    attributes, files and every batch, streamed in chunks, then renamed into place
    (a reader never sees half a file)."""

    def __init__(self, path: Path, attrs: dict[str, Any], plan: Plan) -> None:
        self.path = path
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._write, args=(attrs, plan),
                                       name="mpiscore-plan-json", daemon=True)
        self.thread.start()

    def _write(self, attrs: dict[str, Any], plan: Plan) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(temporary, "w") as out:
                # the job's "batches" counts them; here they are listed: one key each
                count = {"batch_count" if k == "batches" else k: v for k, v in attrs.items()}
                head = json.dumps({**count, **plan.head_json()}, indent=2)
                out.write(head[:-2] + ',\n  "batches": [')  # head ends "\n}"
                for first in range(0, plan.batch_count, PLAN_CHUNK):
                    chunk = plan.batch_rows_json(first, first + PLAN_CHUNK)
                    text = ",\n    ".join(map(json.dumps, chunk))
                    out.write(("," if first else "") + "\n    " + text)
                out.write("\n  ]\n}\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            self.error = exc
            temporary.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise the StorageError writing failed with, if it has (and did not yet say so)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise storage_error(self.path, error, "cannot write the job's plan") from error

    def wait(self) -> None:
        """Until ``plan.json`` is written; raises its StorageError if that failed."""
        self.thread.join()
        self.check()


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
