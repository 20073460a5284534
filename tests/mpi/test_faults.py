"""Fault injection under mpiexec -n 2/3: retries, budget, crashes, hangs, kills, signals, resume.

Faults come from MPISCORE_FAULTS (mpiscore/faults.py), fired inside the real
scoring processes and ranks. Every output is checked row by row against an
uninterrupted run or a plain onnxruntime reference.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.dataset as ds
import pytest

from mpiscore.tuning import SCORING_DEPTH
from tests import builders
from tests.mpi.launch import error_lines, journaled, mpiscore, wait_for_batches

ROWS, BATCH = 1200, 40  # 30 batches


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("faults")
    x = builders.features(ROWS, seed=11)
    model = builders.mlp(folder / "mlp.onnx")
    clean = folder / "clean.h5"
    files = {"model": model, "h5": builders.write_h5(folder / "x.h5", features=x),
             "parquet": builders.write_parquet(folder / "x.parquet", x, np.arange(ROWS),
                                               row_group_size=100),
             "clean": clean}
    result = mpiscore(2, *job_args(files, clean))
    assert result.returncode == 0, result.stderr
    return files


def job_args(files: dict[str, Path], out: Path, *extra: object) -> list[object]:
    return ["--model", files["model"], "--input", files["h5"], "--output", out,
            "--mini-batch-size", BATCH, "--intra-op-threads", 1, *extra]


def faulty(ranks: int, spec: str, *args: object) -> subprocess.CompletedProcess[str]:
    return mpiscore(ranks, *args, faults=spec)


@pytest.fixture
def started_job(jobs):
    """``started_job(out, spec, *args, batches_done=N)``: a 2-rank job in the background,
    once it has journaled N batches; killed when the test ends (the jobs fixture)."""

    def start(out: Path, spec: str, *args: object, batches_done: int) -> subprocess.Popen:
        process = jobs(2, *args, faults=spec)
        wait_for_batches(process, out, batches_done)
        return process

    return start


def h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        assert handle.attrs["mpiscore_status"] == "complete"
        return {name: handle[name][()] for name in ("logits", "label", "row_status")}


def assert_identical(path: Path, clean: Path) -> None:
    got, want = h5(path), h5(clean)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name


def summary(out: Path) -> dict:
    return json.loads(Path(f"{out}.run/summary.json").read_text())


@pytest.mark.parametrize("ranks", [2, 3])
def test_batch_raising_once_is_retried(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    result = faulty(ranks, "raise:3,raise:17", *job_args(data, out))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])
    report = summary(out)
    assert report["batches_failed"] == 0
    assert sum(r["failures"] for r in report["per_rank"]) == 2


@pytest.mark.parametrize("ranks", [2, 3])
def test_batch_always_raising_is_recorded_and_masked(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    args = job_args(data, out, "--error-threshold", BATCH, "--max-retries", 2)
    result = faulty(ranks, "sleep:0.02,raise-always:20", *args)
    assert result.returncode == 0, result.stderr
    got, want = h5(out), h5(data["clean"])
    bad = slice(20 * BATCH, 21 * BATCH)
    assert (got["row_status"][bad] == 1).all() and got["row_status"].sum() == BATCH
    assert np.isnan(got["logits"][bad]).all() and (got["label"][bad] == -1).all()
    keep = np.ones(ROWS, bool)
    keep[bad] = False
    assert got["logits"][keep].tobytes() == want["logits"][keep].tobytes()
    failed = json.loads(Path(f"{out}.run/failed_batches.json").read_text())["failed"]
    assert [f["batch_id"] for f in failed] == [20]
    assert failed[0]["rows"] == [bad.start, bad.stop]
    assert len(failed[0]["attempts"]) == 3
    assert "InjectedFault" in failed[0]["attempts"][0]["traceback"]
    # retried on another rank where possible (every rank is busy by batch 20)
    assert len({a["rank"] for a in failed[0]["attempts"]}) > 1


@pytest.mark.parametrize("ranks", [2, 3])
def test_error_budget_exceeded_stops_cleanly(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    result = faulty(ranks, "raise-always:2,raise-always:9", *job_args(
        data, out, "--error-threshold", -1, "--mini-batch-error-threshold", 1))
    assert result.returncode == 5, result.stderr
    assert "error budget exceeded: 2 batches failed" in error_lines(result)[0]
    assert not out.exists() and Path(f"{out}.partial").exists()
    report = summary(out)
    assert report["status"] == "failed" and "--mini-batch-error-threshold 1" in \
        report["stop_reason"]


def test_allowed_failed_percent(data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    args = job_args(data, out, "--error-threshold", -1, "--max-retries", 0)
    result = faulty(2, "raise-always:2,raise-always:9", *args, "--allowed-failed-percent", 10)
    assert result.returncode == 0, result.stderr  # 80 of 1200 rows: 6.7%
    result = faulty(2, "raise-always:2,raise-always:9,raise-always:11", *args, "--overwrite",
                    "--allowed-failed-percent", 5)
    assert result.returncode == 5 and "--allowed-failed-percent 5" in error_lines(result)[0]


@pytest.mark.parametrize("ranks", [2, 3])
def test_scoring_process_killed_mid_batch(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    result = faulty(ranks, "kill:4,kill:20", *job_args(data, out))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])
    assert sum(r["scorer_restarts"] for r in summary(out)["per_rank"]) == 2


@pytest.mark.parametrize("ranks", [2, 3])
def test_hanging_batch_times_out_and_is_retried(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    started = time.monotonic()
    result = faulty(ranks, "hang:7", *job_args(data, out, "--batch-timeout", 3))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 40
    assert_identical(out, data["clean"])
    assert "timed out after" in Path(f"{out}.run/logs/rank-00000.log").read_text()


@pytest.mark.parametrize("ranks", [2, 3])
def test_killed_rank_ends_job_then_resume_completes(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    started = time.monotonic()
    result = faulty(ranks, "sleep:0.05,kill-rank:1", *job_args(data, out))
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert not out.exists()
    journal = journaled(out)  # rank 1's first batch may die with the job unjournaled
    assert len(journal) < ROWS // BATCH  # under load, rank 0 may have none of its own
    result = mpiscore(ranks, *job_args(data, out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])
    assert summary(out)["rows_scored"] == ROWS - BATCH * len(journal)


@pytest.mark.parametrize("ranks", [2, 3])
def test_raising_rank_aborts_within_seconds(data, tmp_path, ranks) -> None:
    out = tmp_path / "y.h5"
    started = time.monotonic()
    result = faulty(ranks, "sleep:0.05,raise-rank:1", *job_args(data, out))
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert f"[rank 1 of {ranks}]" in result.stderr
    assert "injected fault on rank 1" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("output", ["y.h5", "y.parquet"])
def test_sigterm_stops_gracefully_then_resume_is_identical(data, tmp_path, output,
                                                            started_job) -> None:
    out = tmp_path / output
    process = started_job(out, "sleep:0.1", *job_args(data, out), batches_done=4)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 75, stderr
    assert "rerun with --resume" in stderr
    report = summary(out)
    assert report["status"] == "stopped" and "SIGTERM" in report["stop_reason"]
    assert 4 <= report["batches_done"] < ROWS // BATCH
    assert not out.exists()
    result = mpiscore(3, *job_args(data, out, "--resume"))
    assert result.returncode == 0, result.stderr
    if output.endswith(".h5"):
        assert_identical(out, data["clean"])
    else:
        table = ds.dataset(out).to_table()
        want = h5(data["clean"])
        np.testing.assert_array_equal(table["label"].to_numpy(), want["label"])
        logits = np.stack(table["logits"].to_numpy(zero_copy_only=False))
        assert logits.tobytes() == want["logits"].tobytes()


def test_resume_refused_when_model_or_input_changed(data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    result = faulty(2, "sleep:0.05,kill-rank:1", *job_args(data, out))
    assert result.returncode != 0
    other = {**data, "model": builders.mlp(tmp_path / "other.onnx", seed=5)}
    result = mpiscore(2, *job_args(other, out, "--resume"))
    assert result.returncode == 2 and "the model changed" in error_lines(result)[0]
    changed = {**data, "h5": builders.write_h5(tmp_path / "x.h5",
                                               features=builders.features(ROWS, seed=12))}
    result = mpiscore(2, *job_args(changed, out, "--resume"))
    assert result.returncode == 2 and "the input files changed" in error_lines(result)[0]
    result = mpiscore(2, *job_args(data, out, "--resume", "--mini-batch-size", 50))
    assert result.returncode == 2 and "the mini-batch size changed" in error_lines(result)[0]


def test_nan_input_policy(data, tmp_path) -> None:
    x = builders.features(ROWS, seed=11)
    x[[50, 51, 700]] = np.nan
    path = builders.write_h5(tmp_path / "nan.h5", features=x)
    files = {**data, "h5": path}
    out = tmp_path / "y.h5"
    result = mpiscore(2, *job_args(files, out, "--error-threshold", -1, "--max-retries", 0))
    assert result.returncode == 0, result.stderr
    status = h5(out)["row_status"]
    assert status.sum() == 2 * BATCH and status[50] == status[700] == 1
    failed = json.loads(Path(f"{out}.run/failed_batches.json").read_text())["failed"]
    assert "2 rows with NaN, inf or null values (first at input row 50, row " \
        in failed[0]["attempts"][0]["error"]
    result = mpiscore(2, *job_args(files, out, "--on-nan", "pass", "--overwrite"))
    assert result.returncode == 0, result.stderr
    got = h5(out)
    assert not got["row_status"].any() and np.isnan(got["logits"][50]).all()


def test_corrupted_chunk_fails_its_batch_only(data, tmp_path) -> None:
    x = builders.features(ROWS, seed=11)
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=x, chunks=(BATCH, 8), compression="gzip")
        offset, size = handle["features"].id.get_chunk_info(10).byte_offset, 64
    raw = bytearray(path.read_bytes())
    raw[offset:offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
    out = tmp_path / "y.h5"
    files = {**data, "h5": path}
    result = mpiscore(2, *job_args(files, out, "--error-threshold", BATCH, "--max-retries", 1))
    assert result.returncode == 0, result.stderr
    got, want = h5(out), h5(data["clean"])
    assert got["row_status"].sum() == BATCH and got["row_status"][10 * BATCH] == 1
    ok = got["row_status"] == 0
    assert got["logits"][ok].tobytes() == want["logits"][ok].tobytes()


def test_second_signal_stops_at_once(data, tmp_path, started_job) -> None:
    """A batch hangs; the first SIGTERM waits for it (grace 60 s), the second does not."""
    out = tmp_path / "y.h5"
    process = started_job(out, "sleep:0.05,hang:6", *job_args(data, out, "--stop-grace", 60),
                          batches_done=8)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # no event to wait for: that nothing happens within a second is the point
    assert process.poll() is None  # still waiting for the hanging batch
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert process.returncode not in (0, 75), stderr
    assert "second SIGTERM" in stderr
    assert not out.exists()


def test_stop_abandons_a_batch_past_the_grace_period_then_resume(data, tmp_path,
                                                                 started_job) -> None:
    """SIGTERM while a batch hangs: after --stop-grace it is abandoned, left for --resume."""
    out = tmp_path / "y.h5"
    process = started_job(out, "sleep:0.05,hang:6", *job_args(data, out, "--stop-grace", 2),
                          batches_done=8)
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 75, stderr
    assert 2 <= time.monotonic() - started < 20
    assert 6 not in journaled(out)
    result = mpiscore(2, *job_args(data, out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])


def test_progress_timeout_stops_a_stuck_job_resumably(data, tmp_path) -> None:
    """A batch hangs with no --batch-timeout: the watchdog stops the job (exit 75), naming
    the batch in flight and its rank, and --resume finishes it identically."""
    out = tmp_path / "y.h5"
    started = time.monotonic()
    result = faulty(2, "hang:5", *job_args(data, out, "--progress-timeout", 2,
                                           "--stop-grace", 1))
    assert result.returncode == 75, result.stderr
    assert time.monotonic() - started < 40
    assert "no batch completed for" in result.stderr and "--progress-timeout 2" in result.stderr
    assert "batch 5 for" in result.stderr
    assert not out.exists()
    assert summary(out)["status"] == "stopped"
    result = mpiscore(2, *job_args(data, out, "--resume"))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])


def test_progress_timeout_leaves_a_slow_but_moving_job_alone(data, tmp_path) -> None:
    out = tmp_path / "y.h5"
    result = faulty(2, "sleep:0.05", *job_args(data, out, "--progress-timeout", 5))
    assert result.returncode == 0, result.stderr
    assert_identical(out, data["clean"])


def test_killed_process_holding_short_batches_charges_the_batch_it_was_on(data, tmp_path
                                                                         ) -> None:
    """Short batches: a process holds many and says Scored for several at once, so its
    messages do not say which batch it is on; its scoreboard does. The batch it was
    killed on is charged (and succeeds when retried); had another been charged, the
    killing batch would come back untried and kill again and again, until the
    innocent ones ran out of tries."""
    out = tmp_path / "y.h5"
    result = faulty(2, "kill:250", "--model", data["model"], "--input", data["h5"],
                    "--output", out, "--mini-batch-size", 4, "--intra-op-threads", 1,
                    "--max-retries", 1)
    assert result.returncode == 0, result.stderr
    got, want = h5(out), h5(data["clean"])  # other batch sizes: the same rows, to rounding
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    assert got["row_status"].tobytes() == want["row_status"].tobytes()
    per_rank = summary(out)["per_rank"]
    assert sum(r["scorer_restarts"] for r in per_rank) == 1
    assert max(r["scoring_depth"] for r in per_rank) > SCORING_DEPTH  # it held several
    tries = [json.loads(line) for events in Path(f"{out}.run/events").glob("*.jsonl")
             for line in events.read_text().splitlines()]
    failed = [(t["id"], t["try"]) for t in tries if t.get("k") == "b" and t["out"] == "failed"]
    assert failed == [(250, 0)]
