"""scorer.py's write-behind: written batches are flushed together and reported done only then.

Real parts: a job prepared from a real model and HDF5 file, the scoring
process's own BatchProcessor, and a real channel to read its reports from.
"""

from __future__ import annotations

import time
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
from mpiscore.rank.pool import ScorerSpec
from mpiscore.scoring import main as scorer
from mpiscore.scoring.onnx import open_session
from mpiscore.scoring.pipeline import BatchProcessor
from mpiscore.scoring.prepare import prepare
from mpiscore.tuning import SYNC_GROUP
from mpiscore.wire import Channel, pipe
from tests import builders


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
    job, _ = prepare(config, model_bytes, open_session(model_bytes, str(model), settings),
                     LockOwner.here())
    spec = ScorerSpec(job, model_bytes, settings, "test", FaultPlan())
    return model, data, job, scorer._processor(spec, None)


def test_read_ahead_never_overwrites_the_batch_being_scored(tmp_path: Path) -> None:
    """The next batch is read while one is held; a reader is reused only once its batch
    is scored, so the held batch's arrays stay put (the HDF5 reader reuses buffers)."""
    _, data, job, processor = scoring_process_parts(tmp_path)
    ours, (read_fd, write_fd) = pipe()
    reads = scorer._ReadAhead(Channel(read_fd, write_fd), processor)
    writer = scorer._WriteBehind(processor, scorer._Sender(ours))
    for batch in job.plan.batches:
        ours.send((batch, 0))
    ours.send(None)
    taken = []
    while (item := reads.next(writer)) is not None:
        batch, attempt, loaded = item
        time.sleep(0.05)  # time for the reader to go ahead as far as it may
        np.testing.assert_array_equal(loaded.arrays["features"],
                                      data[batch.global_start:batch.global_stop])
        taken.append((batch.batch_id, attempt))
        reads.done_with_last()
    assert taken == [(b.batch_id, 0) for b in job.plan.batches]
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
    writer = scorer._WriteBehind(processor, scorer._Sender(Channel(read_fd, write_fd)))
    batches = job.plan.batches  # 7 batches of 10 rows
    for batch in batches[:6]:
        writer.put(batch, processor.score(batch, processor.read(batch)))
    writer.sync_soon()  # the scoring loop ran out of batches: flush what is written
    writer.put(batches[6], processor.score(batches[6], processor.read(batches[6])))
    writer.close()
    processor.close()

    assert log.flushes == [[0, 1, 2, 3], [4, 5], [6]]
    assert not log.reported_before_first_flush
    reports = [ours.recv() for _ in batches]
    assert [(kind, batch_id) for kind, batch_id, _ in reports] == \
        [("done", b.batch_id) for b in batches]
    with h5py.File(job.target.partial, "r") as handle:
        expected = builders.reference(model, features=data)
        np.testing.assert_allclose(handle["logits"][()], expected["logits"], rtol=1e-6)
