"""``mpiscore status RUN_DIR`` on real jobs: while one runs, after it completed, after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mpiscore.cli import main
from mpiscore.lock import pid_alive
from tests import builders
from tests.mpi.launch import finish, kill, mpiscore, rank_pids, wait_for_batches, wait_until
from tests.mpi.test_trust import job, summary

ROWS = 1200


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("status")
    x = builders.features(ROWS, seed=5)
    return {"model": builders.mlp(folder / "mlp.onnx"),
            "h5": builders.write_h5(folder / "x.h5", features=x)}


def status(run_dir: Path) -> dict:
    result = CliRunner().invoke(main, ["status", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def text(run_dir: Path) -> str:
    result = CliRunner().invoke(main, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def labels_right(out: Path, data: dict[str, Path]) -> None:
    want = builders.reference(data["model"], features=builders.features(ROWS, seed=5))
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["label"][()], want["label"])


def test_status_while_running_then_complete_and_watch(data, tmp_path, jobs) -> None:
    out, run_dir = tmp_path / "y.h5", tmp_path / "y.h5.run"
    process = jobs(2, *job(data, out, 10), faults="sleep:0.05")  # 120 batches, ~3 s
    wait_for_batches(process, out, 10)
    deadline = time.monotonic() + 20
    while (info := status(run_dir))["rows_done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info["state"] == "running", info
    assert 0 < info["rows_done"] < ROWS and info["rows"] == ROWS
    assert info["rows_per_second"] > 0 and info["eta_seconds"] > 0
    assert info["batches"] == 120 and info["batches_failed"] == 0
    assert [r["rank"] for r in info["ranks"]] == [0, 1]
    assert all(time.time() - r["last_heard"] < 10 for r in info["ranks"])
    assert "running: " in text(run_dir) and "rank 1: last heard" in text(run_dir)
    watch = subprocess.Popen([sys.executable, "-m", "mpiscore", "status", "--watch", "--json",
                              str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        code, stderr = finish(process)
        assert code == 0, stderr
        lines = watch.communicate(timeout=10)[0].splitlines()  # it ends with the job
    finally:
        kill(watch)
    assert watch.returncode == 0
    assert json.loads(lines[0])["state"] == "running"
    assert json.loads(lines[-1])["state"] == "complete"
    info = status(run_dir)
    assert info["state"] == "complete" and info["rows_done"] == ROWS == info["rows"]
    assert info["eta_seconds"] is None and info["rows_per_second"] > 0
    assert f"complete: {ROWS:,} of {ROWS:,} rows (100.0%)" in text(run_dir)
    labels_right(out, data)


def test_status_after_a_killed_job_then_resume_from_its_config(data, tmp_path, jobs) -> None:
    out, run_dir = tmp_path / "y.h5", tmp_path / "y.h5.run"
    process = jobs(2, *job(data, out), faults="sleep:0.05")
    wait_for_batches(process, out, 3)
    killed = time.time()
    os.kill(rank_pids(out)[0], signal.SIGKILL)
    finish(process)
    deadline = time.monotonic() + 10
    while summary(run_dir)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    info = status(run_dir)
    assert info["state"] == "died", info
    assert killed - 20 < info["heartbeat_at"] <= killed + 1
    assert info["eta_seconds"] is None
    said = text(run_dir)
    assert said.startswith("died: ") and "heartbeat stopped at " in said and "--resume" in said
    result = mpiscore(2, "--config", run_dir / "config.toml", "--resume")
    assert result.returncode == 0, result.stderr
    labels_right(out, data)
    assert status(run_dir)["state"] == "complete"


def test_status_of_a_job_killed_while_its_entry_script_starts(tmp_path, jobs) -> None:
    """mpiexec and every process below it SIGKILLed during init(): the lock names a
    rank 0 gone from this host, so the job's heartbeat stopped (at the lock's time)."""
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"f{i}.txt").write_text(f"{i}\n")
    script = tmp_path / "hang.py"
    script.write_text("import time\n\ndef init():\n    time.sleep(3600)\n\n"
                      "def run(mini_batch):\n    return list(mini_batch)\n")
    out, run_dir = tmp_path / "hi.txt", tmp_path / "hi.txt.run"
    process = jobs(2, "--entry-script", script, "--input", tmp_path / "in",
                   "--input-mode", "files", "--output-action", "append_row", "--output", out)
    wait_until(lambda: (run_dir / "lock").exists() and status(run_dir)["state"] == "starting",
               process, "its start-up")
    kill(process)
    pid = json.loads((run_dir / "lock").read_text())["pid"]
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    info = status(run_dir)
    assert info["state"] == "heartbeat-stopped", info
    assert info["heartbeat_at"] == (run_dir / "lock").stat().st_mtime
    assert info["output"] is None and info["ranks"] is None and "updated_at" in info
    assert "heartbeat stopped at " in text(run_dir)
