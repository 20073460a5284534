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
from mpiscore.scoring import main as scorer
from mpiscore.scoring.pipeline import BatchProcessor, Loaded
from mpiscore.scoring.prepare import prepare
from mpiscore.scoring.scorers import open_scorer
from mpiscore.tuning import SYNC_GROUP
from mpiscore.wire import (
    Channel,
    Close,
    Done,
    Flushed,
    ProtocolError,
    Score,
    Scored,
    ScorerSpec,
    StageTimes,
    pipe,
)
from tests import builders

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
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.features(70)
    source = builders.write_h5(tmp_path / "x.h5", chunks=10, features=data)
    config = JobConfig(model=model, inputs=(InputSpec(str(source), "/features"),),
                       output=tmp_path / "out.h5", batch_size=BatchSize(rows=10))
    settings = scorer_settings(config, 0, 1)
    model_bytes = read_model(model)
    job, _, _ = prepare(config, model_bytes,
                        lambda: open_scorer("onnx", model_bytes, str(model), settings),
                        LockOwner.here())
    spec = ScorerSpec(job, model_bytes, settings, "test", FaultPlan())
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
        ours.send(Score(batch, 0))
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
    assert [[done.batch_id for done in report.done] for report in reports] == log.flushes
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
    assert ours.recv() == Flushed((done[0],))
    sender.hold(True)
    sender.done(done)
    assert not ours.poll()
    sender.scored(7)
    assert ours.recv() == Scored(7, tuple(done))
    sender.hold(False)  # a long batch: no waiting
    sender.done(done[1:])
    assert ours.recv() == Flushed((done[1],))
    sender.scored(8)
    assert ours.recv() == Scored(8)
    sender.hold(True)
    sender.done(done[:1])
    sender.release()  # the batch failed
    assert ours.recv() == Flushed((done[0],))
    sender.hold(True)
    sender.scored(9)
    assert ours.recv() == Scored(9)
    assert not ours.poll()


def test_a_reader_thread_bug_reaches_the_scoring_loop(tmp_path: Path) -> None:
    """A message the reader cannot take is raised by the loop's next(), in this thread:
    the process's main() then exits with its traceback; no thread ends the process."""
    _, _, job, processor = scoring_process_parts(tmp_path)
    ours, (read_fd, write_fd) = pipe()
    reads = scorer._ReadAhead(Channel(read_fd, write_fd), processor)
    writer = scorer._WriteBehind(processor, scorer._Sender(ours), reads.fail)
    ours.send(Score(job.plan.batches[0], 0))
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
