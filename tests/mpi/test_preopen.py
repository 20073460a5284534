"""Every scoring process but rank 0's first opens the model's session from its path
before the job is broadcast (wire.Preopen), and keeps it for the job: summary.json's
per_rank says how many did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import builders
from tests.builders import assert_matches, read_h5
from tests.mpi.launch import mpiscore


@pytest.mark.parametrize("procs", [1, 2])
def test_every_rank_opens_its_sessions_before_the_job_and_keeps_them(tmp_path, procs) -> None:
    model = builders.mlp(tmp_path / "m.onnx")
    data = builders.features(500)
    source = builders.write_h5(tmp_path / "x.h5", chunks=50, features=data)
    out = tmp_path / "y.h5"
    result = mpiscore(2, "--model", model, "--input", f"{source}:/features", "--output", out,
                      "--mini-batch-size", 50, "--procs-per-rank", procs,
                      "--intra-op-threads", 1)
    assert result.returncode == 0, result.stderr
    assert_matches(read_h5(out), builders.reference(model, features=data))
    per_rank = json.loads(Path(f"{out}.run/summary.json").read_text())["per_rank"]
    # rank 0's first process prepared the job with a session of its own; every other
    # process's session was open before the job came, and is the one that scored
    assert [r["preopened_sessions"] for r in per_rank] == [procs - 1, procs]
    assert [r["scorer_restarts"] for r in per_rank] == [0, 0]
