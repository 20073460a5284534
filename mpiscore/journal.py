"""The run directory's durable record of progress, and the checks that make resuming safe.

``journal.txt`` gets one line per batch, appended by the coordinator only
after the scoring process has written and flushed that batch's output; a
killed job therefore never claims a row it did not write. ``fingerprint.json``
records what the output was made from (model hash, input files with sizes
and modification times, the plan, the output layout); ``--resume`` refuses to
continue when any of it changed, and says what.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError

JOURNAL = "journal.txt"
FINGERPRINT = "fingerprint.json"


def fingerprint(model_sha256: str, files: list[str], plan_rows: list[list[int]],
                batch_rows: int, output: str, output_format: str,
                fields: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, Any]:
    """What the output depends on, in a form that compares with ``==`` after a JSON trip."""
    plan_hash = hashlib.sha256(json.dumps(plan_rows).encode()).hexdigest()
    return {
        "model_sha256": model_sha256,
        "inputs": [_file_stamp(path) for path in files],
        "plan": {"batch_rows": batch_rows, "batches": len(plan_rows), "sha256": plan_hash},
        "output": {"path": output, "format": output_format,
                   "fields": [[name, dtype, list(shape)] for name, dtype, shape in fields]},
    }


def _file_stamp(path: str) -> dict[str, Any]:
    info = os.stat(path)
    return {"path": path, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def check_resumable(run_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume unless the recorded fingerprint matches ``current``; say what differs."""
    path = run_dir / FINGERPRINT
    if not path.exists():
        raise ConfigError(f"--resume: {path} not found; nothing to resume in --run-dir {run_dir}")
    recorded = json.loads(path.read_text())
    for key, what in (("model_sha256", "the model changed"), ("inputs", "the input files changed"),
                      ("plan", "the mini-batch plan changed"), ("output", "the output changed")):
        if recorded.get(key) != current[key]:
            raise ConfigError(f"--resume refused: {what} since the interrupted run "
                              f"({_difference(recorded.get(key), current[key])}); "
                              "run without --resume (and with --overwrite) to start over")


def _difference(before: Any, after: Any) -> str:
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for old, new in zip(before, after, strict=True):
            if old != new:
                return f"was {old}, now {new}"
    return f"was {before}, now {after}"


def completed(run_dir: Path) -> set[int]:
    """Batch ids the journal records as written (a torn last line is ignored)."""
    path = run_dir / JOURNAL
    if not path.exists():
        return set()
    lines = path.read_text().split("\n")
    return {int(line) for line in lines[:-1] if line.strip().isdigit()}


class Journal:
    """Append-only list of completed batches, flushed line by line."""

    def __init__(self, run_dir: Path, fresh: bool) -> None:
        mode = "w" if fresh else "a"
        self.handle: TextIO = open(run_dir / JOURNAL, mode, buffering=1)  # noqa: SIM115

    def record(self, batch_id: int) -> None:
        self.handle.write(f"{batch_id}\n")

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
