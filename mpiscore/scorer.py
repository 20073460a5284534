"""The inside of a scoring process: set up once, then read, score and write batches.

Started by pool.py with ``spawn``. It ignores SIGINT/SIGTERM (its rank decides
how to stop) and dies with its rank (PR_SET_PDEATHSIG), so no scorer outlives
a killed job.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .errors import MpiscoreError
from .io.registry import open_reader
from .pipeline import BatchProcessor
from .pool import ScorerSpec
from .score import Scorer, open_session


def scorer_main(conn: Connection) -> None:
    """Body of a scoring process: wait for the job, set up once, then process batches.

    The process is started before the job is known, so its interpreter start
    and heavy imports overlap with rank 0's checks and planning.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    spec: ScorerSpec | None = _next_item(conn)
    if spec is None:  # the job never started (set-up failed): nothing to do
        return
    try:
        processor = _processor(spec)
    except BaseException as exc:
        conn.send(("init-failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ready",))
    while (item := _next_item(conn)) is not None:
        batch, attempt = item
        try:
            spec.faults.before_batch(batch.batch_id, attempt)
            times = processor(batch)
            conn.send(("done", times))
        except Exception as exc:
            conn.send(("failed", _describe(exc), traceback.format_exc()))
    processor.close()


def _processor(spec: ScorerSpec) -> BatchProcessor:
    job = spec.job
    session = open_session(job.model_bytes, job.model_name, spec.settings)
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    return BatchProcessor(open_reader(job.source), Scorer(session, job.bindings, job.model_name),
                          writer, job.outputs, job.output_sources, spec.where, job.config.on_nan)


def _next_item(conn: Connection) -> Any:
    try:
        return conn.recv()
    except EOFError:  # the rank is gone
        return None


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MpiscoreError) else f"{type(exc).__name__}: {exc}"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its rank dies (no orphaned scorers)."""
    with contextlib.suppress(OSError):  # not Linux: orphans end at their pipe's EOF
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
