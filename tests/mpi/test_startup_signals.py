"""SIGTERM at any moment of start-up (imports, MPI start-up, planning, model loading):
a clean stop with exit 75 and one line, never a traceback or a death by signal; the
next run (with --resume when a partial output was left, as the line says) completes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import builders
from tests.mpi.launch import descendants, error_lines, mpiscore


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("startup")
    return {"model": builders.mlp(folder / "mlp.onnx"),
            "h5": builders.write_h5(folder / "x.h5", features=builders.features(2000, seed=4))}


def catches_sigterm(pid: int) -> bool:
    """Whether the process has its SIGTERM handler in place (SigCgt in /proc status).
    Before that, in the interpreter's own start (~50 ms), a signal still kills it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def ranks_of(process: subprocess.Popen, count: int, timeout: float = 30) -> list[int]:
    """The pids of the ``mpiscore`` ranks under mpiexec, once each catches SIGTERM."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ranks = []
        for pid in descendants(process.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mpiscore" in command and b"score" in command and b"-S" not in command \
                    and catches_sigterm(pid):
                ranks.append(pid)
        if len(ranks) == count:
            return ranks
        time.sleep(0.005)
    pytest.fail(f"{count} ranks did not start in {timeout:.0f}s")


@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_sigterm_during_start_up_stops_cleanly(files, tmp_path, delay, jobs) -> None:
    out = tmp_path / "y.h5"
    args = ["--model", files["model"], "--input", files["h5"], "--output", out,
            "--mini-batch-size", 100, "--intra-op-threads", 1]
    process = jobs(2, *args, faults="sleep:0.2")
    ranks = ranks_of(process, 2)
    time.sleep(delay)
    for pid in ranks:  # as Slurm does: every task of the step
        os.kill(pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 75, stderr
    assert "Traceback" not in stderr
    lines = error_lines(subprocess.CompletedProcess([], 75, "", stderr))
    assert len(lines) == 1 and "stopped" in lines[0], stderr
    resume = ["--resume"] if "--resume" in lines[0] else []
    again = mpiscore(2, *args, *resume)
    assert again.returncode == 0, again.stderr
    assert out.exists()
