"""``mpiscore status`` on run directories built by hand: bad ones, and a stopped heartbeat."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from mpiscore.cli import main
from mpiscore.lock import LockOwner, acquire

# README "Watching a job": the keys of --json, in every state
KEYS = ("state", "rows_done", "rows", "rows_per_second", "eta_seconds", "batches_done",
        "batches", "batches_failed", "batches_retried", "failures", "ranks", "updated_at",
        "heartbeat_at", "stop_reason", "output")


def invoke(*args: object):
    return CliRunner().invoke(main, ["status", *map(str, args)])


def running_job(run_dir: Path, age: float, pid: int | None = None) -> None:
    """A run directory as a job leaves it while running, last touched ``age`` s ago."""
    run_dir.mkdir()
    pid = os.getpid() if pid is None else pid
    (run_dir / "summary.json").write_text(json.dumps(
        {"status": "running", "host": socket.gethostname(), "pid": pid}))
    (run_dir / "status.json").write_text(json.dumps(
        {"state": "running", "rows_done": 40, "rows": 100, "rows_per_second": 10.0,
         "eta_seconds": 6.0, "batches_done": 4, "batches": 10, "batches_failed": 0,
         "batches_retried": 1, "ranks": [{"rank": 0, "last_heard": time.time() - age,
                                          "batches_in_flight": [4, 5]}],
         "pid": pid, "updated_at": time.time() - age}))
    (run_dir / "lock").write_text("{}")
    then = time.time() - age
    for name in ("status.json", "lock", "summary.json"):
        os.utime(run_dir / name, (then, then))


def gone_pid() -> int:
    """The pid of a process of this host that has ended."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=30)
    return int(gone.stdout)


def test_a_running_job(tmp_path) -> None:
    running_job(tmp_path / "run", age=1)
    result = invoke(tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["state"] == "running" and info["rows_done"] == 40 and info["eta_seconds"] == 6
    said = invoke(tmp_path / "run").output
    assert said.startswith("running: 40 of 100 rows (40.0%), 10 rows/s, ETA 6.0s")
    assert "batches: 4 of 10 done, 0 failed, 1 retried" in said
    assert "rank 0: last heard" in said and "2 batches in flight (4, 5)" in said


def test_no_heartbeat_for_too_long(tmp_path) -> None:
    running_job(tmp_path / "run", age=600)
    info = json.loads(invoke(tmp_path / "run", "--json").output)
    assert info["state"] == "heartbeat-stopped" and info["eta_seconds"] is None
    assert abs(info["heartbeat_at"] - (time.time() - 600)) < 5
    assert "heartbeat stopped at " in invoke(tmp_path / "run").output


def test_rank_0_gone_on_this_host(tmp_path) -> None:
    running_job(tmp_path / "run", age=1, pid=gone_pid())
    assert json.loads(invoke(tmp_path / "run", "--json").output)["state"] == \
        "heartbeat-stopped"


def starting_job(run_dir: Path, age: float, pid: int, host: str | None = None) -> float:
    """A run directory as a job leaves it in start-up (its entry script's init() running):
    the lock of rank 0 ``pid`` on ``host``, refreshed ``age`` s ago, and the logs;
    returns the lock's mtime."""
    owner = LockOwner(host or socket.gethostname(), pid, None, time.time() - age, "ab12")
    [lock] = acquire((run_dir / "lock",), owner).paths
    (run_dir / "logs").mkdir()
    then = time.time() - age
    os.utime(lock, (then, then))
    return lock.stat().st_mtime


def test_a_job_killed_while_starting_has_its_heartbeat_stopped(tmp_path) -> None:
    """Rank 0 gone from this host before the job planned: not "starting" for ever."""
    beat = starting_job(tmp_path / "run", age=3, pid=gone_pid())
    info = json.loads(invoke(tmp_path / "run", "--json").output)
    assert info["state"] == "heartbeat-stopped" and info["heartbeat_at"] == beat
    assert set(KEYS) <= set(info) and info["eta_seconds"] is None
    said = invoke(tmp_path / "run").output
    assert said.startswith("heartbeat-stopped\nheartbeat stopped at ")
    assert "stopped before scoring: run it again" in said and "--resume" not in said


def test_a_stale_lock_of_another_host_while_starting_has_its_heartbeat_stopped(
        tmp_path) -> None:
    beat = starting_job(tmp_path / "run", age=600, pid=os.getpid(), host="elsewhere")
    info = json.loads(invoke(tmp_path / "run", "--json").output)
    assert info["state"] == "heartbeat-stopped" and info["heartbeat_at"] == beat


def test_a_job_starting_beats_with_its_lock(tmp_path) -> None:
    beat = starting_job(tmp_path / "run", age=1, pid=os.getpid())
    result = invoke(tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["state"] == "starting" and info["heartbeat_at"] == beat
    assert "; heartbeat 20" in invoke(tmp_path / "run").output


def test_every_documented_key_in_every_state(tmp_path) -> None:
    """README's keys, null where unknown: starting, running, and a summary alone."""
    starting_job(tmp_path / "starting", age=1, pid=os.getpid())
    running_job(tmp_path / "running", age=1)
    running_job(tmp_path / "ended", age=1)
    (tmp_path / "ended" / "status.json").unlink()
    (tmp_path / "ended" / "summary.json").write_text(json.dumps(
        {"status": "complete", "output": "y.h5", "rows": 100, "rows_failed": 0,
         "rows_per_second": 50.0, "batches_done": 10, "batches_failed": 0,
         "wall_seconds": 2.0, "stop_reason": None}))
    for name in ("starting", "running", "ended"):
        result = invoke(tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        missing = set(KEYS) - set(json.loads(result.output))
        assert not missing, (name, missing)
        assert invoke(tmp_path / name).exit_code == 0


def test_not_a_run_directory(tmp_path) -> None:
    for path, says in ((tmp_path / "absent", "no such directory"),
                       (tmp_path, "no job status here")):
        result = invoke(path)
        assert result.exit_code == 3, result.output
        [line] = result.output.splitlines()
        assert line.startswith("mpiscore: InputError: ") and says in line


def test_a_run_that_never_started_scoring(tmp_path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"rows": 10, "batches": 1}))
    result = invoke(tmp_path)
    assert result.exit_code == 3
    assert "whose job started scoring" in result.output


def test_a_job_starting_counts_the_batches_plan_json_lists(tmp_path) -> None:
    """Before status.json exists: plan.json lists the batches ([id, file, start, stop])."""
    run_dir = tmp_path / "y.h5.run"
    running_job(run_dir, age=0.5)
    (run_dir / "status.json").unlink()
    (run_dir / "plan.json").write_text(json.dumps(
        {"rows": 30, "batches": [[0, 0, 0, 10], [1, 0, 10, 20], [2, 0, 20, 30]]}))
    result = invoke("--json", run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["batches"] == 3
    assert "of 3 done" in invoke(run_dir).output
