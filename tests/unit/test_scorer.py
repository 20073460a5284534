"""scorer.py's write-behind: written batches are flushed together and reported done only then.

Real parts: a job prepared from a real model and HDF5 file, the scoring
process's own BatchProcessor, and a real channel to read its reports from.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiscore import scorer
from mpiscore.channel import Channel, pipe
from mpiscore.config import BatchSize, InputSpec, JobConfig
from mpiscore.faults import FaultPlan
from mpiscore.io.fields import Columns
from mpiscore.io.hdf5 import Hdf5Writer
from mpiscore.model import read_model
from mpiscore.plan import Batch
from mpiscore.pool import SYNC_GROUP, ScorerSpec
from mpiscore.prepare import prepare
from mpiscore.score import open_session
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


def test_written_batches_are_flushed_in_groups_and_reported_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of SYNC_GROUP, and what is written when the loop runs out of batches."""
    monkeypatch.setattr(scorer, "SYNC_SECONDS", 60.0)  # no flush by age in this test
    assert SYNC_GROUP == 4
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.features(70)
    source = builders.write_h5(tmp_path / "x.h5", features=data)
    config = JobConfig(model=model, inputs=(InputSpec(str(source), "/features"),),
                       output=tmp_path / "out.h5", batch_size=BatchSize(rows=10))
    settings = config.scorer_settings(0, 1)
    model_bytes = read_model(model)
    job, _ = prepare(config, model_bytes, open_session(model_bytes, str(model), settings))
    processor = scorer._processor(ScorerSpec(job, model_bytes, settings, "test", FaultPlan()),
                                  None)
    ours, (read_fd, write_fd) = pipe()
    processor.writer = log = SyncLog(processor.writer, ours)
    writer = scorer._WriteBehind(processor, scorer._Sender(Channel(read_fd, write_fd)))
    batches = job.plan.batches  # 7 batches of 10 rows
    for batch in batches[:6]:
        writer.put(batch, processor.prepare(batch))
    writer.sync_soon()  # the scoring loop ran out of batches: flush what is written
    writer.put(batches[6], processor.prepare(batches[6]))
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
