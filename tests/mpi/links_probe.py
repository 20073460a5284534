"""Run by test_links.py under ``mpiexec -n 2``: does one poll of a link see a message
that came while its rank made no MPI call?

Rank 1 sends a Request over its worker link and says so through a file; rank 0,
calling no MPI meanwhile, waits for the file (and 50 ms more), then polls its
coordinator link once. Then the same the other way, a Stop from rank 0. Each
rank prints what its one poll returned, then receives the message if that poll
did not, so that the job ends cleanly either way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mpi4py import MPI

from mpiscore.rank.messages import Request, Stop
from mpiscore.rank.world import MpiCoordinatorLink, MpiWorkerLink


def after(flag: Path) -> None:
    """Once ``flag`` exists, and 50 ms more (no MPI call meanwhile)."""
    while not flag.exists():
        time.sleep(0.001)
    time.sleep(0.05)


def main(folder: Path) -> None:
    comm = MPI.COMM_WORLD
    comm.Barrier()
    if comm.rank == 1:
        link = MpiWorkerLink(comm)
        link.send(Request(3))
        (folder / "sent-up").touch()
        after(folder / "sent-down")
        got = link.poll()
        print(f"rank 1 saw {got!r}", flush=True)
        if got is None:
            comm.recv(source=0)
    else:
        coordinator = MpiCoordinatorLink(comm)
        after(folder / "sent-up")
        received = coordinator.poll()
        print(f"rank 0 saw {received!r}", flush=True)
        if received is None:
            comm.recv(source=1)
        coordinator.send(1, Stop())
        (folder / "sent-down").touch()
    comm.Barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
