"""scoring/scorers: scorers by kind. A kind registered here, knowing nothing of ONNX,
goes through the job's preparation and a scoring process's pipeline as "onnx" does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiscore.config import BatchSize, InputSpec, JobConfig, ScorerSettings, SessionConfig
from mpiscore.errors import ConfigError
from mpiscore.faults import FaultPlan
from mpiscore.lock import LockOwner
from mpiscore.model import Column, TensorSpec
from mpiscore.scoring import main
from mpiscore.scoring.prepare import prepare
from mpiscore.scoring.scorers import SCORERS, Scorer, open_scorer, register
from mpiscore.wire import ScorerSpec
from tests import builders

SETTINGS = ScorerSettings(SessionConfig(), 1)


class RowSums:
    """Scores each row as the sum of its features: a scorer of no runtime at all."""

    fixed_batch = None
    label_width = 0

    def __init__(self, model_bytes: bytes, model: str, settings: ScorerSettings) -> None:
        self.opened_with = model_bytes, model, settings
        self.inputs = [TensorSpec("features", "float32", (None, 8))]
        self.columns = {"total": Column("total")}
        self.data_files: dict[str, Path] = {}  # nothing besides its "model"
        self.data_stamps = ()  # so none to check
        self.layouts: dict[str, bool] = {}  # nothing decided by its first batches

    def score(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"total": feeds["features"].sum(axis=1)}

    def fix_schema(self, schema: object, layouts: object) -> None:
        """Its one column is always the same."""

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
def row_sums() -> Iterator[str]:
    register("row-sums", RowSums)
    yield "row-sums"
    del SCORERS["row-sums"]


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"m\.x: no scorer of kind 'tensorflow' \(known: onnx"):
        open_scorer("tensorflow", b"", "m.x", SETTINGS)


def test_a_registered_kind_is_opened_by_its_factory(row_sums: str) -> None:
    scorer = open_scorer(row_sums, b"rules", "sums.txt", SETTINGS)
    assert isinstance(scorer, RowSums) and scorer.opened_with == (b"rules", "sums.txt", SETTINGS)


def test_a_job_is_prepared_and_scored_through_any_kind(tmp_path: Path, row_sums: str) -> None:
    data = builders.features(30)
    source = builders.write_h5(tmp_path / "x.h5", chunks=10, features=data)
    config = JobConfig(model=tmp_path / "sums.txt", inputs=(InputSpec(str(source), "/features"),),
                       output=tmp_path / "out.h5", batch_size=BatchSize(rows=10))
    scorer: Scorer = open_scorer(row_sums, b"rules", str(config.model), SETTINGS)
    job, done, _ = prepare(config, b"rules", lambda: scorer, LockOwner.here())
    assert done == set() and [f.name for f in job.outputs] == ["total"]
    processor = main._processor(ScorerSpec(job, None, SETTINGS, "test", FaultPlan()), scorer)
    for batch in job.plan.batches:
        processor.write(batch, processor.score(batch, processor.read(batch)))
    processor.sync()
    processor.close()
    job.lock.release()
    with h5py.File(job.target.partial, "r") as handle:
        np.testing.assert_allclose(handle["total"][()], data.sum(axis=1), rtol=1e-6)
