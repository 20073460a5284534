"""The inside of a scoring process: set up once, then read and score batches while a
thread writes the previous one.

Started by pool.py with ``spawn``. It ignores SIGINT/SIGTERM (its rank decides
how to stop) and dies with its rank (PR_SET_PDEATHSIG), so no scorer outlives
a killed job.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .errors import MpiscoreError
from .io.registry import open_reader
from .pipeline import BatchProcessor, Prepared
from .plan import Batch
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
    sender = _Sender(conn)
    sender.send(("ready",))
    writer = _WriteBehind(processor, sender)
    while (item := _next_item(conn)) is not None:
        batch, attempt = item
        try:
            spec.faults.before_batch(batch.batch_id, attempt)
            prepared = processor.prepare(batch)
        except Exception as exc:
            sender.send(("failed", batch.batch_id, _describe(exc), traceback.format_exc()))
            continue
        sender.send(("scored", batch.batch_id))  # free for the next batch while this one writes
        writer.put(batch, prepared)
    writer.close()
    processor.close()


class _Sender:
    """The pipe to the rank, shared by the scoring loop and the writer thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)


class _WriteBehind:
    """Writes scored batches on a thread while the next batch is read and scored.

    At most one batch waits while another is written, which bounds memory; a
    batch is reported done only once its rows are written and flushed.
    """

    def __init__(self, processor: BatchProcessor, sender: _Sender) -> None:
        self.processor, self.sender = processor, sender
        self.queue: queue.Queue[tuple[Batch, Prepared] | None] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="mpiscore-writer", daemon=True)
        self.thread.start()

    def put(self, batch: Batch, prepared: Prepared) -> None:
        self.queue.put((batch, prepared))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            batch, prepared = item
            try:
                times = self.processor.write(batch, prepared)
                self.sender.send(("done", batch.batch_id, times))
            except Exception as exc:
                self.sender.send(("failed", batch.batch_id, _describe(exc),
                                  traceback.format_exc()))


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
