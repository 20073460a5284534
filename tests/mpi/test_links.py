"""The ranks' MPI links under a real ``mpiexec -n 2``: a message that arrived while a
rank made no MPI call is seen by its next poll, not the one after (world._probe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.mpi.launch import MPIEXEC, TIMEOUT_SECONDS

PROBE = Path(__file__).with_name("links_probe.py")


def test_one_poll_sees_a_message_that_came_while_the_rank_made_no_mpi_call(tmp_path) -> None:
    assert MPIEXEC
    result = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(PROBE), str(tmp_path)],
        capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "rank 0 saw (1, Request(count=3))", "rank 1 saw Stop()"], result.stdout
