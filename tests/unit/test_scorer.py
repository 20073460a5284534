"""scoring/main.py's threads: read-ahead keeps a held batch's arrays, write-behind
flushes written batches together and reports them done only then, and a bug in
either thread reaches the scoring loop instead of ending the process from a thread.

Real parts: a job prepared from a real model and HDF5 file, the scoring
process's own BatchProcessor, and a real channel to read its reports from.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiscore.config import BatchSize, InputSpec, JobConfig
from mpiscore.faults import FaultPlan
from mpiscore.io.fields import Columns
from mpiscore.io.hdf5 import Hdf5Writer
from mpiscore.job import Job
from mpiscore.lock import LockOwner
from mpiscore.model import read_model
from mpiscore.placement import scorer_settings
from mpiscore.plan import Batch
from mpiscore.rank.pool import ScorerPool
from mpiscore.rank.process import ScorerProcess
from mpiscore.scoring import main as scorer
from mpiscore.scoring.pipeline import BatchProcessor, Loaded
from mpiscore.scoring.prepare import prepare
from mpiscore.scoring.scorers import open_scorer
from mpiscore.tuning import SYNC_GROUP
from mpiscore.wire import (
    BatchFailed,
    Channel,
    Close,
    Closed,
    Done,
    Durable,
    Flushed,
    Preopen,
    ProtocolError,
    Ready,
    Score,
    Scored,
    ScorerSpec,
    StageTimes,
    pipe,
    recv_at_rank,
)
from tests import builders
from tests.builders import assert_matches

TIMEOUT = 10.0  # seconds any wait here may take before the test fails


class SyncLog(Hdf5Writer):
    """The real HDF5 writer, noting which batches each flush covered."""

    def __init__(self, writer: Hdf5Writer, reports: Channel) -> None:
        super().__init__(writer.partial, writer.final, list(writer.fields.values()),
                         writer.offsets)
        self.reports = reports
        self.written: list[int] = []
        self.flushes: list[list[int]] = []
        self.reported_before_first_flush = False

    def write(self, batch: Batch, columns: Columns) -> None:
        super().write(batch, columns)
        self.written.append(batch.batch_id)

    def sync(self) -> None:
        if not self.flushes:
            self.reported_before_first_flush = self.reports.poll()
        super().sync()
        self.flushes.append(self.written)
        self.written = []


def scoring_process_parts(tmp_path: Path) -> tuple[Path, np.ndarray, Job, BatchProcessor]:
    """A 70-row job in batches of 10, prepared as rank 0's first process does, and a
    scoring process's BatchProcessor for it."""
    model, data, job, spec = prepared_job(tmp_path, rows=70, seed=0)
    return model, data, job, scorer._processor(spec, None)


class WatchedReads:
    """Notes each read as the reader thread starts it: the batch, its reader slot, and
    which batches the scoring loop held then; a condition says when one is done."""

    def __init__(self, processor: BatchProcessor) -> None:
        self.read, self.processor = processor.read, processor
        self.held: dict[int, int] = {}  # batch id -> slot, of batches taken and not scored
        self.started: list[tuple[int, int, dict[int, int]]] = []
        self.done: set[int] = set()
        self.changed = threading.Condition()
        processor.read = self  # type: ignore[method-assign]

    def __call__(self, batch: Batch, slot: int = 0) -> Loaded:
        with self.changed:
            self.started.append((batch.batch_id, slot, dict(self.held)))
        loaded = self.read(batch, slot)
        with self.changed:
            self.done.add(batch.batch_id)
            self.changed.notify_all()
        return loaded

    def wait_for(self, batch_id: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: batch_id in self.done, TIMEOUT), batch_id


def test_read_ahead_never_overwrites_the_batch_being_scored(tmp_path: Path) -> None:
    """The next batch is read while one is held; a reader is reused only once its batch
    is scored, so the held batch's arrays stay put (the HDF5 reader reuses buffers)."""
    _, data, job, processor = scoring_process_parts(tmp_path)
    watched = WatchedReads(processor)
    ours, (read_fd, write_fd) = pipe()
    reads = scorer._ReadAhead(Channel(read_fd, write_fd), processor)
    writer = scorer._WriteBehind(processor, scorer._Sender(ours), reads.fail)
    batches = job.plan.batches
    for batch in batches:
        ours.send(Score((batch,), (0,)))
    ours.send(Close())
    taken = []
    while (item := reads.next(writer)) is not None:
        batch, attempt, loaded = item
        with watched.changed:
            watched.held[batch.batch_id] = next(
                slot for b, slot, _ in watched.started if b == batch.batch_id)
        if batch.batch_id + 1 < len(batches):  # the reader goes ahead as far as it may
            watched.wait_for(batch.batch_id + 1)
        np.testing.assert_array_equal(loaded.arrays["features"],
                                      data[batch.global_start:batch.global_stop])
        taken.append((batch.batch_id, attempt))
        with watched.changed:
            del watched.held[batch.batch_id]
        reads.done_with_last()
    assert taken == [(b.batch_id, 0) for b in batches]
    for batch_id, slot, held in watched.started:  # never into the slot of a held batch
        assert slot not in held.values(), (batch_id, slot, held)
    writer.close()
    processor.close()


def test_written_batches_are_flushed_in_groups_and_reported_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of SYNC_GROUP, and what is written when the loop runs out of batches."""
    monkeypatch.setattr(scorer, "SYNC_SECONDS", 60.0)  # no flush by age in this test
    assert SYNC_GROUP == 4
    model, data, job, processor = scoring_process_parts(tmp_path)
    ours, (read_fd, write_fd) = pipe()
    processor.writer = log = SyncLog(processor.writer, ours)
    bugs: list[BaseException] = []
    writer = scorer._WriteBehind(processor, scorer._Sender(Channel(read_fd, write_fd)),
                                 bugs.append)
    batches = job.plan.batches  # 7 batches of 10 rows
    for batch in batches[:6]:
        writer.put(batch, processor.score(batch, processor.read(batch)))
    writer.sync_soon()  # the scoring loop ran out of batches: flush what is written
    writer.put(batches[6], processor.score(batches[6], processor.read(batches[6])))
    writer.close()
    processor.close()

    assert not bugs
    assert log.flushes == [[0, 1, 2, 3], [4, 5], [6]]
    assert not log.reported_before_first_flush
    reports = [ours.recv() for _ in log.flushes]  # one message a flush
    assert all(isinstance(report, Flushed) for report in reports), reports
    assert [list(report.done.batch_ids) for report in reports] == log.flushes
    with h5py.File(job.target.partial, "r") as handle:
        expected = builders.reference(model, features=data)
        np.testing.assert_allclose(handle["logits"][()], expected["logits"], rtol=1e-6)


def test_dones_wait_for_the_scored_of_a_short_batch_and_ride_in_it() -> None:
    """While the loop scores a short batch, a flush's Dones wait for its Scored: one
    message (one wake-up of the rank); while it scores none, or a long one, they go at
    once; those held for a batch that failed go when it does."""
    ours, (read_fd, write_fd) = pipe()
    sender = scorer._Sender(Channel(read_fd, write_fd))
    done = [Done(1, StageTimes(0.1, 0.2, 0.3)), Done(2, StageTimes(0.1, 0.2, 0.3))]
    sender.done(done[:1])  # no batch being scored
    assert ours.recv() == Flushed(Durable.of(done[:1]))
    sender.hold(True)
    sender.done(done)
    assert not ours.poll()
    sender.scored(7)
    assert ours.recv() == Scored((7,), Durable.of(done))
    sender.hold(False)  # a long batch: no waiting
    sender.done(done[1:])
    assert ours.recv() == Flushed(Durable.of(done[1:]))
    sender.scored(8)
    assert ours.recv() == Scored((8,))
    sender.hold(True)
    sender.done(done[:1])
    sender.release()  # the batch failed
    assert ours.recv() == Flushed(Durable.of(done[:1]))
    sender.hold(True)
    sender.scored(9)
    assert ours.recv() == Scored((9,))
    assert not ours.poll()


def test_scored_of_short_batches_wait_while_more_are_here(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """While short batches keep coming, one Scored says several (one wake-up of the rank):
    they wait while the next batch is here, up to REPORT_SECONDS; they go when none is,
    and before any other message, so the rank hears of batches in order."""
    ours, (read_fd, write_fd) = pipe()
    sender = scorer._Sender(Channel(read_fd, write_fd))
    done = Done(1, StageTimes(0.1, 0.2, 0.3))
    for batch_id in (7, 8):
        sender.hold(True)
        sender.scored(batch_id, more=True)
    sender.done([done])
    assert not ours.poll()
    sender.hold(True)
    sender.scored(9, more=False)  # the loop would wait for the rank next
    assert ours.recv() == Scored((7, 8, 9), Durable.of([done]))
    sender.hold(True)
    sender.scored(10, more=True)
    sender.send(BatchFailed(11, "boom", ""))  # what waits goes first
    assert ours.recv() == Scored((10,))
    assert ours.recv() == BatchFailed(11, "boom", "")
    sender.hold(True)
    sender.scored(12, more=True)
    sender.hold(False)  # a long batch: nothing waits through it
    assert ours.recv() == Scored((12,))
    monkeypatch.setattr(scorer, "REPORT_SECONDS", 0.0)  # waited long enough
    sender.hold(True)
    sender.scored(13, more=True)
    assert ours.recv() == Scored((13,))
    sender.hold(True)
    sender.scored(14, more=True)
    sender.release()  # the loop has no batch: closing
    assert ours.recv() == Scored((14,))
    assert not ours.poll()


def test_a_reader_thread_bug_reaches_the_scoring_loop(tmp_path: Path) -> None:
    """A message the reader cannot take is raised by the loop's next(), in this thread:
    the process's main() then exits with its traceback; no thread ends the process."""
    _, _, job, processor = scoring_process_parts(tmp_path)
    ours, (read_fd, write_fd) = pipe()
    reads = scorer._ReadAhead(Channel(read_fd, write_fd), processor)
    writer = scorer._WriteBehind(processor, scorer._Sender(ours), reads.fail)
    ours.send(Score((job.plan.batches[0],), (0,)))
    ours.send(ScorerSpec(job, None, None, "test", FaultPlan()))  # once only, before batches
    item = reads.next(writer)
    assert item is not None and item[0] == job.plan.batches[0]
    reads.done_with_last()
    with pytest.raises(ProtocolError, match="ScorerSpec received; expected Score or Close"):
        reads.next(writer)
    writer.close()
    processor.close()


class BrokenSender:
    """A report that fails as a bug would: the writer thread cannot go on."""

    def send(self, message: object) -> None:
        raise RuntimeError("a bug in reporting")

    def done(self, done: object) -> None:
        raise RuntimeError("a bug in reporting")


def test_a_writer_thread_bug_reaches_the_scoring_loop(tmp_path: Path) -> None:
    """The writer hands its bug to the loop (fail), then only takes what the loop still
    puts, so the loop never blocks on it; close() raises the bug."""
    _, _, job, processor = scoring_process_parts(tmp_path)
    bugs: queue.Queue[BaseException] = queue.Queue()
    writer = scorer._WriteBehind(processor, BrokenSender(), bugs.put)  # type: ignore[arg-type]
    first, *others = job.plan.batches
    writer.put(first, processor.score(first, processor.read(first)))
    writer.sync_soon()  # the flush reports Done: the bug
    assert "a bug in reporting" in str(bugs.get(timeout=TIMEOUT))
    for batch in others:  # more than the writer's queue holds
        writer.put(batch, processor.score(batch, processor.read(batch)))
    with pytest.raises(RuntimeError, match="a bug in reporting"):
        writer.close()
    processor.close()


def prepared_job(tmp_path: Path, rows: int, seed: int
                 ) -> tuple[Path, np.ndarray, Job, ScorerSpec]:
    """A ``rows``-row job in batches of 10 for the model at m.onnx, prepared as rank 0's
    first process does, and the ScorerSpec a scoring process gets for it."""
    model = builders.mlp(tmp_path / "m.onnx", seed=seed)
    data = builders.features(rows)
    source = builders.write_h5(tmp_path / "x.h5", chunks=10, features=data)
    config = JobConfig(model=model, inputs=(InputSpec(str(source), "/features"),),
                       output=tmp_path / "out.h5", batch_size=BatchSize(rows=10))
    settings = scorer_settings(config, 0, 1)
    job_bytes = read_model(model)
    job, _, _ = prepare(config, job_bytes,
                        lambda: open_scorer("onnx", job_bytes, str(model), settings),
                        LockOwner.here())
    return model, data, job, ScorerSpec(job, job_bytes, settings, "test", FaultPlan())


def preopen_job(tmp_path: Path) -> tuple[Path, np.ndarray, Job, ScorerSpec]:
    """A 20-row job for a process of rank 1 (prepared_job)."""
    return prepared_job(tmp_path, rows=20, seed=1)


@pytest.mark.parametrize("replaced", [False, True], ids=["same", "replaced"])
def test_a_preopened_session_serves_only_the_job_s_own_model(tmp_path: Path,
                                                             replaced: bool) -> None:
    """A real scoring process opens the model at the job's path before the job comes
    (wire.Preopen); the job keeps that session only if the bytes it opened are the
    job's (by digest). A file replaced after the job read it is not the job's model:
    that session is dropped, one is opened from the job's bytes, and they score."""
    model, data, job, spec = preopen_job(tmp_path)
    job_bytes, settings = spec.model_bytes, spec.settings
    (tmp_path / "job.onnx").write_bytes(job_bytes)
    if replaced:  # what the process will open is another model now
        builders.mlp(model, seed=2)
    proc = ScorerProcess()
    try:
        proc.conn.send(Preopen("onnx", str(model), settings))
        proc.conn.send(spec)
        assert proc.conn.poll(TIMEOUT)
        assert recv_at_rank(proc.conn) == Ready(preopened=not replaced)
        proc.conn.send(Score((job.plan.batches[0],), (0,)))
        proc.conn.send(Close())
        messages = []
        while not messages or not isinstance(messages[-1], Closed):
            assert proc.conn.poll(TIMEOUT), messages
            messages.append(recv_at_rank(proc.conn))
    finally:
        proc.kill()
    assert not any(isinstance(m, BatchFailed) for m in messages), messages
    with h5py.File(job.target.partial, "r") as handle:
        got = {name: handle[name][:10] for name in handle if not name.startswith("_")}
    assert not got.pop("row_status").any()
    assert_matches(got, builders.reference(tmp_path / "job.onnx", features=data[:10]))


def test_a_process_killed_while_it_preopens_is_replaced_at_start(tmp_path: Path) -> None:
    """A scoring process that dies while it opens its session before the job (killed,
    out of memory) is replaced when the job starts, as one that died idle is: no hang."""
    _, _, job, spec = preopen_job(tmp_path)
    job.config.resolved_run_dir.mkdir(exist_ok=True)
    pool = ScorerPool(2, None, spec.settings, rank=1)
    try:
        pool.preopen(job.config)
        pool.procs[0].process.kill()  # dies by itself: its rank has not looked
        pool.procs[0].process.wait()
        pool.start(spec)
        assert pool.restarts == 1 and pool.preopened == 1  # the other kept its session
    finally:
        pool.close()
        pool.reap()
