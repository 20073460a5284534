"""Run ``mpiscore score`` under ``mpiexec -n N``: the one place the tests build that command.

Every run has a timeout, so a hang fails its test instead of stalling CI. A job in
the background is started through the ``jobs`` fixture (conftest.py), which kills it
with its whole process tree when the test ends, however it ends. benchmarks/common.py
builds the same command for the benchmarks, which must run without the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
TIMEOUT_SECONDS = 90  # a whole job on a loaded 2-core machine
START_SECONDS = 60  # until a background job has journaled what a test waits for


def command(ranks: int, *args: object) -> list[str]:
    """``mpiexec -n ranks python -m mpiscore score ARGS``, without progress lines (every
    60 s: never in a test's output)."""
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
            "--progress-seconds", "60", *map(str, args)]


def _environment(faults: str | None) -> dict[str, str] | None:
    """This environment, with ``MPISCORE_FAULTS`` (mpiscore/faults.py) when given."""
    return None if faults is None else {**os.environ, "MPISCORE_FAULTS": faults}


def mpiscore(ranks: int, *args: object, timeout: float = TIMEOUT_SECONDS,
             faults: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a job to its end; a hang fails the test."""
    return subprocess.run(command(ranks, *args), capture_output=True, text=True,
                          timeout=timeout, env=_environment(faults))


def start(ranks: int, *args: object, faults: str | None = None) -> subprocess.Popen[str]:
    """Start a job in the background; use the ``jobs`` fixture, which also stops it."""
    return subprocess.Popen(command(ranks, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_environment(faults))


def finish(process: subprocess.Popen[str], timeout: float = TIMEOUT_SECONDS) -> tuple[int, str]:
    """Wait for a background job to end: its exit code and stderr."""
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def kill(process: subprocess.Popen[str]) -> str:
    """SIGKILL a job and every process below it (hydra's proxies and the ranks start
    sessions of their own, so a process group would not reach them), then reap it;
    returns what it had left on stderr."""
    if process.poll() is None:
        for pid in [process.pid, *descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if process.stderr is None or process.stderr.closed:
        return ""
    return process.communicate(timeout=TIMEOUT_SECONDS)[1]


def wait_until(condition: Callable[[], object], process: subprocess.Popen[str], what: str,
               timeout: float = START_SECONDS) -> None:
    """Poll ``condition`` until it holds; fail, with the job's stderr, if the job ends
    first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or process.poll() is not None:
            pytest.fail(f"job did not get to {what}: {kill(process)}")
        time.sleep(0.01)


def wait_for_batches(process: subprocess.Popen[str], out: Path, batches: int) -> None:
    """Until the job writing ``out`` has journaled ``batches`` batches."""
    wait_until(lambda: len(journaled(out)) >= batches, process, f"{batches} journaled batches")


def journaled(out: Path) -> list[int]:
    """The batch ids the run directory's journal records (its lines after the header)."""
    path = Path(f"{out}.run/journal.txt")
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(line.split()[0]) for line in lines[1:] if len(line.split()) == 2]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines mpiscore itself printed about the failure."""
    return [line for line in result.stderr.splitlines() if line.startswith("mpiscore:")]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), nearest first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += (kids := children.get(todo.pop(0), []))
        todo += kids
    return found


def rank_pids(out: Path) -> dict[int, int]:
    """The MPI rank processes (not their scoring processes) of the job writing ``out``."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpiscore" in argv and b"score" in argv and str(out).encode() in argv:
            rank = [e for e in env if e.startswith(b"PMI_RANK=")]
            if rank:
                ranks[int(rank[0].split(b"=")[1])] = int(entry.name)
    return ranks
