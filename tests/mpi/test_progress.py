"""Rank 0's live progress: plain lines off a terminal, a bar on one, --quiet, --log-level."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import builders
from tests.mpi.launch import command, error_lines, mpiscore

ESCAPE = "\x1b["
TERMINAL = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}  # what a user's has


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("progress")
    model = builders.mlp(folder / "m.onnx", features=16, hidden=256)
    data = builders.write_h5(folder / "x.h5", chunks=500,
                             features=builders.features(60_000, 16, seed=5))
    return {"model": model, "data": data}


def args(job: dict[str, Path], out: Path, *more: object) -> list[object]:
    return ["--model", job["model"], "--input", f"{job['data']}:/features", "--output", out,
            "--mini-batch-size", 500, *more]


def test_off_a_terminal_progress_is_plain_lines(job, tmp_path) -> None:
    result = mpiscore(2, *args(job, tmp_path / "y.h5"), "--progress-seconds", 0.01)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "INFO progress:" in line]
    assert progress and all("rows/s, eta" in line for line in progress)
    assert "\r" not in result.stderr and ESCAPE not in result.stderr


def test_progress_bar_can_be_asked_for_under_mpiexec(job, tmp_path) -> None:
    result = subprocess.run(command(2, *args(job, tmp_path / "y.h5"), "--progress", "bar"),
                            capture_output=True, text=True, timeout=90, env=TERMINAL)
    assert result.returncode == 0, result.stderr
    assert ESCAPE in result.stderr and "60000/60000" in result.stderr
    assert "120/120 batches" in result.stderr


def test_on_a_terminal_rank_zero_draws_a_bar(job, tmp_path) -> None:
    """A run in a pseudo-terminal (one rank, no launcher: stderr is the terminal)."""
    argv = command(1, *args(job, tmp_path / "y.h5"))[3:]  # without mpiexec -n 1
    output = _in_a_terminal(argv)
    assert "scoring" in output and ESCAPE in output, output
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert "60000/60000 rows" in shown and "rows/s" in shown and "ranks busy" in shown, shown
    assert "INFO complete: 60,000 rows" in output  # log lines still come, above the bar


def test_quiet_says_nothing_but_errors(job, tmp_path) -> None:
    out = tmp_path / "y.h5"
    result = mpiscore(2, *args(job, out), "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "INFO complete" in Path(f"{out}.run/logs/rank-00000.log").read_text()
    missing = args(job, tmp_path / "z.h5")
    missing[3] = f"{tmp_path / 'nope.h5'}:/features"
    again = mpiscore(2, *missing, "--quiet")
    assert again.returncode == 3 and len(error_lines(again)) == 1, again.stderr
    assert again.stderr.count("\n") == 1


def test_log_level_applies_to_stderr_and_the_rank_logs(job, tmp_path) -> None:
    out = tmp_path / "y.h5"
    result = mpiscore(2, *args(job, out), "--log-level", "warning")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for log in Path(f"{out}.run/logs").glob("rank-*.log"):
        assert " INFO " not in log.read_text(), log


def _in_a_terminal(argv: list[str], timeout: float = 90) -> str:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               close_fds=True, env=TERMINAL)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, \
            b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


assert sys.platform.startswith("linux")  # pty and /proc: the tests run on Linux
