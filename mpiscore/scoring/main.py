"""The inside of a scoring process: set up once, then score batches while one thread
reads the next and another writes (and flushes) the previous ones.

Started by process.py as a fresh interpreter (``python -S -c``, given its end
of the channel to the rank). It ignores SIGINT/SIGTERM (its rank decides how to stop)
and dies with its rank (PR_SET_PDEATHSIG), so no scorer outlives a killed job.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any

import onnxruntime as ort

from ..errors import InputChanged, MpiscoreError, is_storage_failure
from ..io.registry import open_reader
from ..model import read_model
from ..plan import Batch
from ..rank.pool import PrepareRequest, ScorerSpec, StageTimes
from ..report import write_json
from ..tuning import SYNC_GROUP
from ..wire import Channel
from .onnx import Scorer, open_session
from .pipeline import BatchProcessor, Loaded, Prepared
from .prepare import prepare


def main(read_fd: int, write_fd: int) -> None:
    """Entry of a scoring process; the descriptors are its end of the channel to the rank."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # process.py
    _die_with_parent()
    _die_quietly_if_rank_gone(lambda: scorer_main(Channel(read_fd, write_fd)))
    _exit(0)


def _exit(code: int) -> None:
    """Leave with ``os._exit``, as multiprocessing's children do: once the last batch
    is written and reported nothing is left to clean up, and destroying the
    session and unloading onnxruntime would cost tens of milliseconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def scorer_main(conn: Channel) -> None:
    """Body of a scoring process: wait for the job, set up once, then process batches.

    The process is started before the job is known, so its interpreter start
    and heavy imports overlap with the rank's. On rank 0, the first process is
    first asked to prepare the job, and keeps that session for scoring.
    """
    item = _next_item(conn)
    session = None
    if isinstance(item, PrepareRequest):
        session = _prepare(conn, item)
        item = _next_item(conn) if session is not None else None
    spec: ScorerSpec | None = item
    if spec is None:  # the job never started (set-up failed): nothing to do
        return
    if spec.records_death:
        _record_death_of_rank(spec)
    try:
        processor = _processor(spec, session)
    except BaseException as exc:
        conn.send(("init-failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    sender = _Sender(conn)
    sender.send(("ready",))
    writer = _WriteBehind(processor, sender)
    reads = _ReadAhead(conn, processor)
    while (item := reads.next(writer)) is not None:
        batch, attempt, loaded = item
        try:
            spec.faults.before_batch(batch.batch_id, attempt)
            if isinstance(loaded, BaseException):
                raise loaded
            prepared = processor.score(batch, loaded)
        except Exception as exc:
            sender.send(_failed(batch, exc))
            continue
        finally:
            reads.done_with_last()
        sender.send(("scored", batch.batch_id))  # free for the next batch while this one writes
        writer.put(batch, prepared)
    writer.close()
    processor.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sender.send(("closed", usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))
    _exit(0)  # now, while the session is still alive: not worth destroying


class _Sender:
    """The pipe to the rank, shared by the scoring loop and the writer thread."""

    def __init__(self, conn: Channel) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)


class _ReadAhead:
    """Reads the next batch on a thread while the current one is scored.

    It takes batches from the rank's channel as they come. Its readers take
    turns, and one is used again only once the batch it read last is scored,
    so a batch's arrays stay put while it is scored.
    """

    def __init__(self, conn: Channel, processor: BatchProcessor) -> None:
        self.conn, self.processor = conn, processor
        self.loaded: queue.Queue[tuple[Batch, int, Loaded | BaseException] | None] = \
            queue.Queue(maxsize=1)
        self.free_readers = threading.Semaphore(len(processor.readers))
        self.waiting_for_rank = False
        self.thread = threading.Thread(target=self._run, name="mpiscore-reader", daemon=True)
        self.thread.start()

    def next(self, writer: _WriteBehind) -> tuple[Batch, int, Loaded | BaseException] | None:
        """The next batch read (or the error reading it), None at the end. Out of batches
        for now, the written ones are flushed first, so a rank short of batches hears of
        those done without delay."""
        if self.loaded.empty() and self.waiting_for_rank:
            writer.sync_soon()
        return self.loaded.get()

    def done_with_last(self) -> None:
        """The batch last taken is scored (or failed): its reader may read again."""
        self.free_readers.release()

    def _run(self) -> None:
        _die_quietly_if_rank_gone(self._read_all)

    def _read_all(self) -> None:
        slot = 0
        while True:
            self.waiting_for_rank = not self.conn.poll()
            item = _next_item(self.conn)
            self.waiting_for_rank = False
            if item is None:
                self.loaded.put(None)
                return
            batch, attempt = item
            self.free_readers.acquire()
            try:
                loaded: Loaded | BaseException = self.processor.read(batch, slot)
            except Exception as exc:
                loaded = exc
            self.loaded.put((batch, attempt, loaded))
            slot = (slot + 1) % len(self.processor.readers)


class _WriteBehind:
    """Writes scored batches on a thread while the next batch is read and scored.

    Written batches are made durable in groups, and only then reported done:
    one flush to storage covers up to SYNC_GROUP batches, or those written in
    SYNC_SECONDS, or whatever is written when the scoring loop runs out of
    batches. The journal so never claims rows that could be lost, and a parallel
    filesystem is not asked for a flush per batch. At most one batch waits
    while another is written, which bounds memory.
    """

    def __init__(self, processor: BatchProcessor, sender: _Sender) -> None:
        self.processor, self.sender = processor, sender
        self.queue: queue.Queue[tuple[Batch, Prepared] | str | None] = queue.Queue(maxsize=1)
        self.unsynced: list[tuple[Batch, StageTimes]] = []  # written, in the writer thread
        self.oldest = 0.0  # when the first of ``unsynced`` was written
        self.put_since_sync = False  # the scoring loop's view
        self.thread = threading.Thread(target=self._run, name="mpiscore-writer", daemon=True)
        self.thread.start()

    def put(self, batch: Batch, prepared: Prepared) -> None:
        self.queue.put((batch, prepared))
        self.put_since_sync = True

    def sync_soon(self) -> None:
        """Flush what is written once the batch being written is: no more are coming now."""
        if self.put_since_sync:
            self.queue.put(_SYNC)
            self.put_since_sync = False

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        _die_quietly_if_rank_gone(self._write_all)

    def _write_all(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=self._until_sync())
            except queue.Empty:  # the oldest written batch has waited SYNC_SECONDS
                item = _SYNC
            if item is None or item == _SYNC:
                self._sync()
                if item is None:
                    return
            else:
                self._write(*item)

    def _until_sync(self) -> float | None:
        if not self.unsynced:
            return None
        return max(0.0, self.oldest + SYNC_SECONDS - time.monotonic())

    def _write(self, batch: Batch, prepared: Prepared) -> None:
        try:
            times = self.processor.write(batch, prepared)
        except Exception as exc:
            self.sender.send(_failed(batch, exc))
            return
        if not self.unsynced:
            self.oldest = time.monotonic()
        self.unsynced.append((batch, times))
        if len(self.unsynced) >= SYNC_GROUP:
            self._sync()

    def _sync(self) -> None:
        written, self.unsynced = self.unsynced, []
        if not written:
            return
        try:
            seconds = self.processor.sync()
        except Exception as exc:
            for batch, _ in written:
                self.sender.send(_failed(batch, exc))
            return
        for batch, times in written:  # the flush's time shared out among its batches
            self.sender.send(("done", batch.batch_id,
                              replace(times, write=times.write + seconds / len(written))))


_SYNC = "sync"  # in the writer's queue: flush what is written now
READ_AHEAD = 2  # readers taking turns: the next batch is read while one is scored
SYNC_SECONDS = 0.1  # the longest a written batch waits for its group's flush


def _prepare(conn: Channel, request: PrepareRequest) -> ort.InferenceSession | None:
    """Load the model and prepare the job (prepare.py), sending the job or the error
    back; the session, kept for scoring, or None after an error."""
    config = request.config
    try:
        model_bytes = read_model(config.model)
        session = open_session(model_bytes, str(config.model), request.settings)
        job, done = prepare(config, model_bytes, session, request.owner)
    except MpiscoreError as exc:
        conn.send(("prepare-failed", exc))
        return None
    except Exception:  # a bug: its traceback, so the rank can report it
        conn.send(("prepare-failed", RuntimeError(traceback.format_exc())))
        return None
    conn.send(("prepared", job, done))
    return session


def _processor(spec: ScorerSpec, session: ort.InferenceSession | None) -> BatchProcessor:
    """Reader, scorer and writer of this process; ``session``: one already open with
    the same settings (from preparing the job), else opened here."""
    job = spec.job
    if session is None:
        assert spec.model_bytes is not None, "only the process that prepared gets no model"
        session = open_session(spec.model_bytes, job.model_name, spec.settings)
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    readers = [open_reader(job.source) for _ in range(READ_AHEAD)]
    return BatchProcessor(readers, Scorer(session, job.bindings, job.model_name),
                          writer, job.outputs, job.output_sources, spec.where, job.config.on_nan,
                          job.fingerprint)


def _next_item(conn: Channel) -> Any:
    try:
        return conn.recv()
    except EOFError:  # the rank is gone
        return None


def _die_quietly_if_rank_gone(work: Any) -> None:
    """Run ``work`` (the process's or a thread's); on an error, end the process so the
    rank sees it (and retries its batches), with the traceback of a bug, or quietly
    when the pipe to the rank broke because the rank is gone."""
    try:
        work()
    except BrokenPipeError:
        _exit(1)
    except BaseException:
        traceback.print_exc()
        _exit(1)


def _failed(batch: Batch, exc: BaseException) -> tuple:
    """The message that reports ``batch`` failed; fatal (naming the error class the job
    ends with) when the storage refused a write or an input changed under the job."""
    if is_storage_failure(exc):
        fatal = "StorageError"
    elif isinstance(exc, InputChanged):
        fatal = "InputChanged"
    else:
        fatal = ""
    return ("failed", batch.batch_id, _describe(exc), traceback.format_exc(), fatal)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MpiscoreError) else f"{type(exc).__name__}: {exc}"


def _die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``signum`` to this process when its rank dies (no orphans)."""
    with contextlib.suppress(OSError):  # not Linux: orphans end at their pipe's EOF
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG


def _record_death_of_rank(spec: ScorerSpec) -> None:
    """On rank 0's first scoring process, die with the rank as before, but first say in
    one line, and record in ``summary.json``, that the job died, so that it does not
    end in silence and say "running" for ever after a hard kill. The launcher
    SIGKILLs every rank when one dies, so no rank can say it; this process, in a
    session of its own, outlives its rank long enough, and its stderr still reaches
    the launcher's output."""
    summary = spec.job.config.resolved_run_dir / "summary.json"

    def record(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):  # dying anyway: nothing must stop the exit
            if json.loads(summary.read_text()).get("status") == "running":
                reason = (f"{spec.where} was killed while the job ran (by a signal, out "
                          "of memory, or by the MPI launcher after another rank died); "
                          f"{spec.job.target.partial} stays partial: rerun with --resume")
                write_json(summary, {"status": "died", "output": str(spec.job.target.partial),
                                     "stop_reason": reason})
                os.write(2, f"mpiscore: the job died: {reason}\n".encode())
        os._exit(1)

    signal.signal(signal.SIGUSR1, record)
    _die_with_parent(signal.SIGUSR1)
