"""Rank 0's coordinator at many ranks: batches/s sustained, first requests served how fast.

    python benchmarks/coordinator.py [--ranks 4 100 1000 10000] [--batches 400000]
        [--window 7] [--seconds 10] [--base /tmp/base15]

Drives the real Coordinator, Scheduler, Journal (in a temporary run
directory), Progress, Watchdog and StatusFile, wired as ``api._coordinate``
wires them, in one process, with simulated ranks instead of MPI: a fake
CoordinatorLink puts what the coordinator sends into one inbox per rank, and
the simulated ranks, served round-robin, report each batch they were
assigned as Completed, one message per batch, as real workers do ("after,
bursts": the coordinator receives up to ``--burst`` reports, then hands out
once, as a loop that drains its links first would). So what is
timed is rank 0's own work per message: the coordinator's, the scheduler's,
the journal's and the progress counters'. Each rank first sends
Request(window) (timed: "first requests"); then batches are completed until
``--batches`` are done or ``--seconds`` pass ("sustained", batches/s).

``--base DIR`` runs the same measurement on the code of another checkout
(``git worktree add -f DIR <commit>``) too, in its own process, so before and
after are compared side by side in one run. Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from common import environment


class SimulatedLinks:
    """The coordinator's link to every simulated rank: one inbox each."""

    def __init__(self, ranks: int) -> None:
        self.inbox: list[deque[Any]] = [deque() for _ in range(ranks)]

    def send(self, rank: int, message: Any) -> None:
        self.inbox[rank].append(message)

    def poll(self) -> None:
        return None


def assigned_ids(message: Any) -> list[int]:
    """The batch ids an Assign carries: a bundle (``batches``) or one (``batch``)."""
    batches = getattr(message, "batches", None)
    return [b.batch_id for b in batches] if batches is not None else [message.batch.batch_id]


def measure(ranks: int, batches: int, window: int, seconds: float, burst: int
            ) -> dict[str, Any]:
    import mpiscore
    from mpiscore.journal import Journal
    from mpiscore.plan import SourceFile, make_plan
    from mpiscore.progress import Progress
    from mpiscore.rank.coordinator import Coordinator
    from mpiscore.rank.messages import Assign, Completed, Request
    from mpiscore.rank.status import StatusFile
    from mpiscore.rank.watchdog import Watchdog
    from mpiscore.schedule import Scheduler

    plan = make_plan([SourceFile("none", batches)], 1)
    scheduler = Scheduler.for_batches(plan.batches, plan.total_rows)
    links = SimulatedLinks(ranks)
    with tempfile.TemporaryDirectory() as run_dir:
        journal = Journal(Path(run_dir), "0" * 16, len(plan.batches), fresh=True)
        progress = Progress(plan.total_rows, len(plan.batches), 30.0, "row", "none")
        watchdog = Watchdog(scheduler, 600.0)
        status = StatusFile(Path(run_dir), scheduler, progress, {}, ranks, plan.total_rows,
                            len(plan.batches))

        def on_complete(batches: list[Any]) -> None:  # as api._coordinate's
            watchdog.completed()
            journal.record(*(batch.batch_id for batch in batches))
            progress(sum(batch.rows for batch in batches), len(batches))
            status.tick()

        coordinator = Coordinator(scheduler, list(range(ranks)), links, links, on_complete)
        status.heard = coordinator.heard
        handle = coordinator.handle
        started = time.perf_counter()
        for rank in range(ranks):
            handle(rank, Request(window))
        first = time.perf_counter() - started
        first_assigned = len(scheduler.in_flight)
        messages = sum(len(inbox) for inbox in links.inbox)

        done, deadline, unserved = 0, time.perf_counter() + seconds, 0
        deliver = coordinator.receive if burst else handle
        cpu, started = time.process_time(), time.perf_counter()
        while not coordinator.finished and done < batches:
            for rank, inbox in enumerate(links.inbox):
                if inbox:
                    message = inbox.popleft()
                    if isinstance(message, Assign):
                        for batch_id in assigned_ids(message):
                            deliver(rank, Completed((batch_id,)))
                            done += 1
                            unserved += 1
                            if unserved == burst:
                                coordinator.hand_out()
                                unserved = 0
            if burst:
                coordinator.hand_out()
                unserved = 0
            status.tick()  # between messages, as rank 0's loop does
            watchdog.check()
            progress.tick()
            if time.perf_counter() > deadline:
                break
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        journal.close()
    return {"ranks": ranks, "window": window, "burst": burst,
            "code": str(Path(mpiscore.__file__).parent.parent),
            "first_requests_seconds": first, "first_assigned": first_assigned,
            "first_assign_messages": messages, "sustained_batches": done,
            "sustained_seconds": wall, "batches_per_second": done / wall,
            "cpu_us_per_batch": 1e6 * cpu / max(done, 1),
            "finished": coordinator.finished}


def run_child(code: Path, ranks: int, burst: int, args: argparse.Namespace
              ) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", str(ranks), "--batches", str(args.batches),
               "--window", str(args.window), "--seconds", str(args.seconds), "--burst",
               str(burst)]
    result = subprocess.run(command, env=environment(code), capture_output=True, text=True,
                            timeout=600, check=True)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 100, 1000, 10_000])
    parser.add_argument("--batches", type=int, default=400_000)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="stop the sustained phase after this long")
    parser.add_argument("--burst", type=int, default=64,
                        help="'after, bursts': receive this many reports, then hand out once")
    parser.add_argument("--base", type=Path, help="also run the code of this checkout")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.batches, args.window, args.seconds,
                                 args.burst)))
        return
    here = Path(__file__).resolve().parent.parent
    runs = ({"before": (args.base.resolve(), 0)} if args.base else {}) | {
        "after": (here, 0), "after, bursts": (here, args.burst)}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for ranks in args.ranks:  # interleaved: before and after see the same machine
        for name, (code, burst) in runs.items():
            results[name].append(run_child(code, ranks, burst, args))
    print(json.dumps({"benchmark": "coordinator", "batches": args.batches,
                      "window": args.window, "results": results}, indent=2))
    print(f"\n{'ranks':>7} {'code':>14} {'batches/s':>11} {'cpu us/batch':>13} "
          f"{'first requests s':>17}")
    for index, ranks in enumerate(args.ranks):
        for name in runs:
            r = results[name][index]
            print(f"{ranks:>7,} {name:>14} {r['batches_per_second']:>11,.0f} "
                  f"{r['cpu_us_per_batch']:>13.1f} {r['first_requests_seconds']:>17.3f}")


if __name__ == "__main__":
    main()
