"""The inside of a scoring process: set up once, then score batches while one thread
reads the next and another writes (and flushes) the previous ones.

Started by rank/process.py as a fresh interpreter (``python -S -c``, through
start.py, given its end of the channel to the rank; the messages are wire.py's). It
ignores SIGINT/SIGTERM (its rank decides how to stop) and dies with its rank
(PR_SET_PDEATHSIG), so no scorer outlives a killed job. A bug, here or in the
reader or writer thread, reaches the scoring loop and ends the process (the rank
sees it and retries its batches); threads never end the process themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import InputChanged, MpiscoreError, is_storage_failure
from ..io.registry import open_reader
from ..model import check_same_data, model_digest, read_model
from ..plan import Batch
from ..report import (
    DEATH_NOTES_SECONDS,
    death_reason,
    forget_death,
    note_death,
    record_death,
)
from ..tuning import (
    READ_AHEAD,
    REPORT_SECONDS,
    SYNC_GROUP,
    SYNC_SECONDS,
)
from ..wire import (
    BatchFailed,
    Channel,
    Close,
    Closed,
    Done,
    DryRunDone,
    Durable,
    Flushed,
    JobPrepared,
    Preopen,
    PrepareFailed,
    PrepareRequest,
    Ready,
    Score,
    Scoreboard,
    Scored,
    ScorerSpec,
    StageTimes,
    StartFailed,
    ToRank,
    recv_in_scorer,
    unexpected,
)
from .pipeline import BatchProcessor, Loaded, Prepared
from .prepare import dry_run, prepare
from .scorers import Scorer, open_scorer


def main(read_fd: int, write_fd: int, board_fd: int) -> None:
    """Entry of a scoring process; the descriptors are its end of the channel to the rank
    and its scoreboard (wire.Scoreboard)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # process.py
    _die_with_parent()
    try:
        scorer_main(Channel(read_fd, write_fd), Scoreboard(board_fd))
    except BrokenPipeError:  # the rank is gone: no one to tell
        _exit(1)
    except BaseException:  # a bug: its traceback; the rank sees the exit, retries the batches
        traceback.print_exc()
        _exit(1)
    _exit(0)


def _exit(code: int) -> None:
    """Leave with ``os._exit``, as multiprocessing's children do: once the last batch
    is written and reported nothing is left to clean up, and destroying the
    session and unloading onnxruntime would cost tens of milliseconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def scorer_main(conn: Channel, board: Scoreboard) -> None:
    """Body of a scoring process: wait for the job, set up once, then process batches.

    The process is started before the job is known, so its interpreter start
    and heavy imports overlap with the rank's. On rank 0, the first process is
    first asked to prepare the job, and keeps that scorer for scoring; the others may
    first be asked to open the model's session (Preopen), kept if the job is for it.
    """
    message = recv_in_scorer(conn)
    preopened = None
    if isinstance(message, Preopen):
        preopened = _preopen(message)
        message = recv_in_scorer(conn)
    scorer = None
    if isinstance(message, PrepareRequest) and message.dry_run_seconds > 0:
        _dry_run(conn, message)
        return
    if isinstance(message, PrepareRequest):
        scorer = _prepare(conn, message)
        message = recv_in_scorer(conn) if scorer is not None else Close()
    if isinstance(message, Close):  # the job never started (set-up failed): nothing to do
        return
    if not isinstance(message, ScorerSpec):
        raise unexpected(message, "ScorerSpec or Close")
    spec = message
    if spec.records_death:
        _record_death_of_rank(spec)
    reused = scorer is None and (scorer := _preopened_for(spec, preopened)) is not None
    preopened = None  # a session the job does not take is dropped here
    try:
        processor = _processor(spec, scorer)
    except BaseException as exc:
        conn.send(StartFailed(f"{type(exc).__name__}: {exc}"))
        return
    sender = _Sender(conn)
    sender.send(Ready(reused))
    reads = _ReadAhead(conn, processor)
    writer = _WriteBehind(processor, sender, reads.fail)
    scoring = float("inf")  # how long the last batch took to score
    while (item := reads.next(writer)) is not None:
        batch, attempt, loaded = item
        sender.hold(scoring < REPORT_SECONDS)
        try:
            spec.faults.before_batch(batch.batch_id, attempt)
            if isinstance(loaded, BaseException):
                raise loaded
            prepared = processor.score(batch, loaded)
        except Exception as exc:
            board.finished(batch.batch_id, time.monotonic())
            sender.send(_failed(batch, exc))
            continue
        finally:
            reads.done_with_last()
        board.finished(batch.batch_id, time.monotonic())
        sender.scored(batch.batch_id, reads.more())  # free for the next while this one writes
        scoring = prepared.score
        writer.put(batch, prepared)
    sender.release()
    writer.close()
    shutdown_error = ""
    try:
        processor.close()
    except MpiscoreError as exc:  # a script's shutdown() failed: its batches are written
        shutdown_error = f"{spec.where}: {type(exc).__name__}: {exc}"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sender.send(Closed(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                       processor.scorer.run_rows, shutdown_error))
    _exit(0)  # now, while the scorer is still alive: not worth destroying


class _Sender:
    """The pipe to the rank, shared by the scoring loop and the writer thread.

    Each message wakes the rank, so a scoring process says as much as it can in each.
    The batches a flush made durable are reported together, and while the loop
    scores a batch that will not take long (it holds them: :meth:`hold`), they wait
    for that batch's Scored and ride in it. While short batches keep coming, their
    Scored wait too, as long as the next batch is already here (so the rank is not
    needed yet) and the oldest has waited under REPORT_SECONDS: one message, one
    wake-up of the rank, for several batches (the rank hands over as many at once,
    rank/pool.py). Nothing waits while the loop has no batch (waiting for the rank,
    or closing), so neither the journal nor the rank's requests lag; any other
    message sends what waits first, so the rank hears of batches in order.
    """

    def __init__(self, conn: Channel) -> None:
        self.conn, self.lock = conn, threading.Lock()
        self.held: list[Done] | None = None  # while held: Dones waiting for the next Scored
        self.scored_ids: list[int] = []  # batches scored whose Scored waits
        self.oldest = 0.0  # when the first of ``scored_ids`` was scored

    def send(self, message: ToRank) -> None:
        with self.lock:
            self._send_held()
            self.conn.send(message)

    def done(self, done: list[Done]) -> None:
        """Report batches made durable: now, or with the Scored of the batch held for."""
        with self.lock:
            if self.held is None:
                self.conn.send(Flushed(Durable.of(done)))
            else:
                self.held += done

    def hold(self, short: bool) -> None:
        """The loop starts scoring a batch: if ``short``, Dones wait for its Scored; else
        what waits goes now."""
        with self.lock:
            if not short:
                self._send_held()
            elif self.held is None:
                self.held = []

    def scored(self, batch_id: int, more: bool = False) -> None:
        """The batch the loop held for is scored: say so, with what waited; unless
        ``more`` batches are here to score next and the wait is still short."""
        with self.lock:
            now = time.monotonic()
            if not self.scored_ids:
                self.oldest = now
            self.scored_ids.append(batch_id)
            if not (more and self.held is not None and now - self.oldest < REPORT_SECONDS):
                self._send_held()

    def release(self) -> None:
        """Send what waits now: the loop has no batch."""
        with self.lock:
            self._send_held()

    def _send_held(self) -> None:
        held, self.held = self.held, None
        if self.scored_ids:
            self.conn.send(Scored(tuple(self.scored_ids), Durable.of(held or ())))
            self.scored_ids.clear()
        elif held:
            self.conn.send(Flushed(Durable.of(held)))


class _ReadAhead:
    """Reads the next batch on a thread while the current one is scored.

    It takes batches from the rank's channel as they come. Its readers take
    turns, and one is used again only once the batch it read last is scored,
    so a batch's arrays stay put while it is scored. Its queue is also where a
    thread's bug (its own or the writer's, :meth:`fail`) reaches the scoring loop.
    """

    def __init__(self, conn: Channel, processor: BatchProcessor) -> None:
        self.conn, self.processor = conn, processor
        # Unbounded, so that :meth:`fail` never blocks; the batches in it are bounded by
        # the readers, each held until its batch is scored.
        self.loaded: queue.Queue[tuple[Batch, int, Loaded | BaseException] | BaseException
                                 | None] = queue.Queue()
        self.free_readers = threading.Semaphore(len(processor.readers))
        self.waiting_for_rank = False
        self.in_hand = 0  # batches of the last Score not read yet
        self.thread = threading.Thread(target=self._run, name="mpiscore-reader", daemon=True)
        self.thread.start()

    def next(self, writer: _WriteBehind) -> tuple[Batch, int, Loaded | BaseException] | None:
        """The next batch read (or the error reading it), None at the end. Out of batches
        for now, the written ones are flushed first, so a rank short of batches hears of
        those done without delay."""
        if self.loaded.empty() and self.waiting_for_rank:
            writer.sync_soon()
        item = self.loaded.get()
        if isinstance(item, BaseException):  # a reader's or writer's bug
            raise item
        return item

    def more(self) -> bool:
        """Whether another batch is here to score next (read, being read, or in the
        pipe): the loop will not wait for the rank before it. A moment's doubt says no."""
        return not self.loaded.empty() or self.in_hand > 0 or self.conn.poll()

    def fail(self, exc: BaseException) -> None:
        """Have the scoring loop raise ``exc`` (a thread's bug) once it takes the batches
        read before it; never blocks."""
        self.loaded.put(exc)

    def done_with_last(self) -> None:
        """The batch last taken is scored (or failed): its reader may read again."""
        self.free_readers.release()

    def _run(self) -> None:
        try:
            self._read_all()
        except BaseException as exc:  # a bug (an error reading a batch is the batch's)
            self.fail(exc)

    def _read_all(self) -> None:
        slot = 0
        while True:
            self.waiting_for_rank = not self.conn.poll()
            message = recv_in_scorer(self.conn)
            self.waiting_for_rank = False
            if isinstance(message, Close):
                self.loaded.put(None)
                return
            if not isinstance(message, Score):
                raise unexpected(message, "Score or Close")
            self.in_hand = len(message.batches)
            for batch, attempt in zip(message.batches, message.attempts, strict=True):
                self.free_readers.acquire()
                try:
                    loaded: Loaded | BaseException = self.processor.read(batch, slot)
                except Exception as exc:
                    loaded = exc
                self.loaded.put((batch, attempt, loaded))
                self.in_hand -= 1
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

    def __init__(self, processor: BatchProcessor, sender: _Sender,
                 fail: Callable[[BaseException], None]) -> None:
        """``fail``: hands a bug of the writer thread to the scoring loop."""
        self.processor, self.sender, self.fail = processor, sender, fail
        self.failure: BaseException | None = None
        self.queue: queue.Queue[tuple[Batch, Prepared] | str | None] = queue.Queue(maxsize=1)
        # written, in the writer thread: each batch, its times and its items without a result
        self.unsynced: list[tuple[Batch, StageTimes, int]] = []
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
        """Write and flush what is left; raises the writer thread's bug, if it had one."""
        self.queue.put(None)
        self.thread.join()
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        """Take items until the last (None); after a bug, only take them, so that the
        scoring loop never waits on a dead writer."""
        while True:
            try:
                item = self.queue.get(timeout=self._until_sync())
            except queue.Empty:  # the oldest written batch has waited SYNC_SECONDS
                item = _SYNC
            if self.failure is None:
                try:
                    self._take(item)
                except BaseException as exc:  # a bug, or the rank is gone (its pipe broke)
                    self.failure, self.unsynced = exc, []
                    self.fail(exc)
            if item is None:
                return

    def _take(self, item: tuple[Batch, Prepared] | str | None) -> None:
        if item is None or item == _SYNC:
            self._sync()
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
        self.unsynced.append((batch, times, prepared.failed_items))
        if len(self.unsynced) >= SYNC_GROUP:
            self._sync()

    def _sync(self) -> None:
        written, self.unsynced = self.unsynced, []
        if not written:
            return
        try:
            seconds = self.processor.sync()
        except Exception as exc:
            for batch, _, _ in written:
                self.sender.send(_failed(batch, exc))
            return
        share = seconds / len(written)  # the flush's time shared out among them
        self.sender.done([Done(batch.batch_id, times._replace(write=times.write + share),
                               failed_items) for batch, times, failed_items in written])


_SYNC = "sync"  # in the writer's queue: flush what is written now


def _prepare(conn: Channel, request: PrepareRequest) -> Scorer | None:
    """Load the model and prepare the job (prepare.py), sending the job or the error
    back; the scorer, kept for scoring, or None after an error."""
    config = request.config
    try:
        model_bytes = read_model(config.scorer_file, config.scorer_kind)
        job, done, scorer = prepare(config, model_bytes, lambda: open_scorer(
            config.scorer_kind, model_bytes, str(config.scorer_file), request.settings),
            request.owner)
    except MpiscoreError as exc:
        conn.send(PrepareFailed(exc))
        return None
    except Exception:  # a bug: its traceback, so the rank can report it
        conn.send(PrepareFailed(RuntimeError(traceback.format_exc())))
        return None
    conn.send(JobPrepared(job, done))
    return scorer


class _Preopened(NamedTuple):
    """A session opened before the job came, and what it was opened for."""

    request: Preopen
    sha256: str  # of the bytes read from the path
    scorer: Scorer


def _preopen(request: Preopen) -> _Preopened | None:
    """The session ``request`` asks for, or None if it cannot be opened: the job then
    opens one as without a Preopen, and reports the error as that would."""
    if request.kind != "onnx":  # an entry script's init() waits for the job's lock
        return None
    try:
        model_bytes = read_model(Path(request.model), request.kind)
        scorer = open_scorer(request.kind, model_bytes, request.model, request.settings)
    except Exception:
        return None
    return _Preopened(request, model_digest(model_bytes), scorer)


def _preopened_for(spec: ScorerSpec, preopened: _Preopened | None) -> Scorer | None:
    """The preopened scorer if it is exactly the one the job's spec asks for: the model
    bytes the job checked (its digest: a file replaced since is not the job's model),
    the same kind, name and session settings."""
    if preopened is None:
        return None
    job, request = spec.job, preopened.request
    same = (preopened.sha256 == job.model_sha256 and request.kind == job.config.scorer_kind
            and request.model == job.model_name and request.settings == spec.settings
            and preopened.scorer.data_stamps == job.model_data)
    return preopened.scorer if same else None


def _dry_run(conn: Channel, request: PrepareRequest) -> None:
    """Check the job and time a few batches (prepare.dry_run), sending what was found or
    the error back; nothing is written, no lock taken."""
    config, settings = request.config, request.settings
    try:
        model_bytes = read_model(config.scorer_file, config.scorer_kind)
        opening = time.perf_counter()
        scorer = open_scorer(config.scorer_kind, model_bytes, str(config.scorer_file),
                             settings)
        opened = time.perf_counter() - opening
        try:
            dry = dry_run(config, model_bytes, scorer, request.dry_run_seconds,
                          request.started, settings.intra_op_threads, opened, settings.rank)
        finally:
            scorer.close()
    except MpiscoreError as exc:
        conn.send(PrepareFailed(exc))
        return
    except Exception:  # a bug: its traceback, so the rank can report it
        conn.send(PrepareFailed(RuntimeError(traceback.format_exc())))
        return
    conn.send(DryRunDone(dry))


def _processor(spec: ScorerSpec, scorer: Scorer | None) -> BatchProcessor:
    """Reader, scorer and writer of this process; ``scorer``: one already open with
    the same settings (from preparing the job), else opened here."""
    job = spec.job
    if scorer is None:
        assert spec.model_bytes is not None, "only the process that prepared gets no model"
        scorer = open_scorer(job.config.scorer_kind, spec.model_bytes, job.model_name,
                              spec.settings)
    check_same_data(job.model_name, scorer.data_stamps, job.model_data, "while the job started")
    scorer.fix_schema({source: (field.dtype, field.shape)
                       for field, source in zip(job.outputs, job.output_sources, strict=True)},
                      dict(job.layouts))
    writer = job.target.open_writer(job.written_fields, list(job.kept), job.plan, job.offsets,
                                    job.attrs)
    readers = [open_reader(job.source) for _ in range(READ_AHEAD)]
    return BatchProcessor(readers, scorer, job.bindings, writer, job.outputs,
                          job.output_sources, spec.where, job.config.on_nan, job.plan.files,
                          raw=job.config.scorer_kind == "script")


def _failed(batch: Batch, exc: BaseException) -> BatchFailed:
    """The message that reports ``batch`` failed; fatal (naming the error class the job
    ends with) when the storage refused a write or an input changed under the job."""
    if is_storage_failure(exc):
        fatal = "StorageError"
    elif isinstance(exc, InputChanged):
        fatal = "InputChanged"
    else:
        fatal = ""
    text = getattr(exc, "script_traceback", None) or traceback.format_exc()  # the user's frames
    return BatchFailed(batch.batch_id, _describe(exc), text, fatal)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MpiscoreError) else f"{type(exc).__name__}: {exc}"


def _die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``signum`` to this process when its rank dies (no orphans)."""
    with contextlib.suppress(OSError):  # not Linux: orphans end at their pipe's EOF
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG


def _record_death_of_rank(spec: ScorerSpec) -> None:
    """On a rank's first scoring process, die with the rank as before, but first note
    when it died (report.note_death); on rank 0's, also say in one line, and record in
    the run directory (``summary.json``, ``history.jsonl``), that the job died, and
    which other ranks died when, so that it does not end in silence and say "running" for
    ever after a hard kill. The launcher SIGKILLs every rank when one dies, so no rank
    can say it; this process, in a session of its own, outlives its rank long enough,
    and its stderr still reaches the launcher's output."""
    partial, run_dir, rank = spec.job.target.partial, spec.job.config.resolved_run_dir, \
        spec.settings.rank

    def record(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):  # dying anyway: nothing must stop the exit
            when = time.time()
            if rank != 0:
                note_death(run_dir, rank, spec.where, when)
                os._exit(1)
            time.sleep(DEATH_NOTES_SECONDS)  # for the others' notes
            reason = death_reason(run_dir, spec.where, when, str(partial))
            if record_death(run_dir, str(partial), reason):
                os.write(2, f"mpiscore: the job died: {reason}\n".encode())
        os._exit(1)

    with contextlib.suppress(OSError):
        forget_death(run_dir, rank)
    signal.signal(signal.SIGUSR1, record)
    _die_with_parent(signal.SIGUSR1)
