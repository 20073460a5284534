"""Dispatch capacity of rank 0: batches per second through the real protocol, no scoring.

    python benchmarks/dispatch.py [--ranks 8] [--batches 40000] [--window 4]

Launches itself under ``mpiexec -n RANKS`` (oversubscribed on a small machine:
that is the point, the ranks only wait). Every rank runs mpiscore's real
worker loop and MPI links, rank 0 wired as the job wires it (coordinator.wire),
with an instant "pool" that finishes each batch the moment it is submitted, so
the coordinator on rank 0 (which also "scores" its share) is the only limit.
Prints JSON, then a line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


class InstantPool:
    """Finishes every batch at once: what a no-op model with no I/O would be."""

    def __init__(self, procs: int) -> None:
        self.slots: list = [None] * procs
        self.restarts = 0

    @property
    def idle(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s is None]

    @property
    def holding(self) -> bool:
        return any(self.slots)

    @property
    def running_low(self) -> bool:
        return True  # its batches take no time: it always runs dry before the next report

    def submit_to(self, proc: int, batch, attempt: int) -> None:
        self.slots[proc] = batch

    def hand_over(self) -> None:
        pass

    def deepen(self, seconds_per_batch: float) -> int:
        return 0  # the window stays as given: this measures rank 0's dispatch

    def poll(self, timeout: float) -> list:
        from mpiscore.rank.pool import Outcome
        from mpiscore.wire import StageTimes

        done = [Outcome(b, True, times=StageTimes(0.0, 0.0, 0.0)) for b in self.slots if b]
        self.slots = [None] * len(self.slots)
        if not done:
            time.sleep(timeout)  # as the real pool waits on its processes
        return done

    def abandon(self) -> list:
        return []


def run_rank(batches: int, window: int, rank0_scores: bool) -> None:
    from mpiscore.plan import SourceFile, make_plan
    from mpiscore.rank.coordinator import wire_rank_zero
    from mpiscore.rank.worker import RankWorker, work
    from mpiscore.rank.world import MpiWorld
    from mpiscore.schedule import Scheduler

    world = MpiWorld.comm_world()
    rank, size = world.rank, world.size
    own_window = window if rank or rank0_scores or size == 1 else 0  # 0: rank 0 only dispatches

    def worker(link) -> RankWorker:
        return RankWorker(InstantPool(max(1, window - 1)), link, own_window, rank)

    world.barrier()
    started = time.perf_counter()
    if rank == 0:
        plan = make_plan([SourceFile("none", batches)], 1)
        scheduler = Scheduler.for_batches(plan.batches, plan.total_rows)
        rank_zero = wire_rank_zero(scheduler, world, worker)  # as the job wires it
        rank_zero.serve(lambda: None)
        own = rank_zero.worker
    else:
        own = worker(world.worker_link())
        work(own, lambda: None)
    seconds = time.perf_counter() - started
    cpu = time.process_time()
    counts = world.gather((own.stats.batches, cpu))
    if rank == 0:
        print(json.dumps({"benchmark": "dispatch", "ranks": size, "window": window,
                          "rank0_scores": rank0_scores,
                          "batches": batches, "seconds": seconds,
                          "batches_per_second": batches / seconds,
                          "batches_per_rank": [c for c, _ in counts]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40_000)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--rank0-scores", action="store_true",
                        help="let rank 0 take batches too (by default it only dispatches)")
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_rank:
        try:
            run_rank(args.batches, args.window, args.rank0_scores)
        except BaseException:
            import traceback

            from mpiscore.rank.world import MpiWorld

            traceback.print_exc()
            MpiWorld.comm_world().abort(1)  # never leave the other ranks waiting
        return
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    result = subprocess.run([mpiexec, "-n", str(args.ranks), sys.executable, __file__,
                             "--as-rank", "--batches", str(args.batches), "--window",
                             str(args.window), *(["--rank0-scores"] if args.rank0_scores else [])],
                            capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    print(f"\n{report['ranks']} ranks, window {report['window']}: "
          f"{report['batches_per_second']:,.0f} batches/s dispatched by rank 0")


if __name__ == "__main__":
    main()
