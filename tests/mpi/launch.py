"""Run ``mpiscore score`` under ``mpiexec -n N`` as a subprocess, always with a timeout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
TIMEOUT_SECONDS = 90


def mpiscore(ranks: int, *args: object, timeout: float = TIMEOUT_SECONDS,
             ) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n ranks python -m mpiscore score ARGS``; a hang fails the test."""
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
               "--progress-seconds", "60", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines mpiscore itself printed about the failure."""
    return [line for line in result.stderr.splitlines() if line.startswith("mpiscore:")]


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
