"""Each run of a job appends to RUN_DIR/history.jsonl and summary.json says the job's
totals; the Slurm ids are in summary.json and in each rank log's first line."""

from __future__ import annotations

import json

import pytest

from tests import builders
from tests.mpi.launch import mpiscore


def test_a_failed_run_and_its_resume_are_two_runs_of_one_job(tmp_path, monkeypatch) -> None:
    model = builders.mlp(tmp_path / "mlp.onnx")
    data = builders.write_h5(tmp_path / "x.h5", features=builders.features(1000, seed=4))
    out, run_dir = tmp_path / "y.h5", tmp_path / "y.h5.run"
    args = ["--model", model, "--input", data, "--output", out, "--mini-batch-size", 100]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("MPISCORE_FAULTS", "raise-always:3")
    first = mpiscore(2, *args, "--max-retries", 0)
    assert first.returncode != 0 and out.with_name("y.h5.partial").exists(), first.stderr
    monkeypatch.delenv("MPISCORE_FAULTS")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    second = mpiscore(2, *args, "--resume")
    assert second.returncode == 0, second.stderr
    runs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["status"] for r in runs] == ["failed", "complete"]
    assert [r["slurm"] for r in runs] == [{"job_id": "4242", "restart_count": 0},
                                          {"job_id": "4242", "restart_count": 1}]
    assert all(r["ranks"] == 2 and r["wall_seconds"] > 0 for r in runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows_scored"] == runs[1]["rows_scored"] < 1000  # this run's keys kept
    assert summary["slurm"] == runs[1]["slurm"]
    job = summary["job"]
    assert job["runs"] == 2 and job["rows_scored"] == sum(r["rows_scored"] for r in runs)
    assert job["rows_scored"] >= 1000 - 100
    assert job["wall_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in runs))
    for rank in (0, 1):
        lines = (run_dir / "logs" / f"rank-0000{rank}.log").read_text().splitlines()
        assert "Slurm job 4242" in lines[0], lines[:2]
