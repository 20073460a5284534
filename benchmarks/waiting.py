"""What waiting costs: each rank process's CPU against its scoring processes', and how
fast rank 0 still dispatches, for two code trees side by side in one run.

    python benchmarks/waiting.py [--before DIR] [--after DIR] [--heavy-rows 400000]
                                 [--short-rows 200000] [--short-batch-rows 768]
                                 [--many 8] [--repeat 1] [--jobs heavy_n2,short_n2,...]
                                 [--dispatch-ranks 8] [--dispatch-batches 20000]

Jobs (HDF5 in and out, the heavy MLP 64 -> 1024 -> 1024 -> 16): ``heavy_n2``
(16,384-row batches, -n 2), ``short_n2`` (``--short-batch-rows`` rows: about
10 ms a batch here, -n 2) and ``heavy_n<many>`` (-n 8, oversubscribed on a small
machine). Per rank, from summary.json: ``loop_cpu_seconds`` (the rank process's
CPU in its scoring loop: start-up and finishing excluded) over ``scorer_cpu_seconds``
(its scoring processes' whole CPU); the job's worst rank is the ratio reported.
Dispatch: ``dispatch.py --ranks 8`` (``--dispatch-ranks``; instant batches:
rank 0's reaction is the only limit), batches/s. ``--before DIR``: a checkout of
the code before the change (for example ``git worktree add -f /tmp/base HEAD``),
run through PYTHONPATH; "after" is this checkout, or ``--after DIR``. ``--jobs``: only
these (``--dispatch-ranks 0``: no dispatch). ``wakeup_floor``: what one wake-up costs a
process that waits in poll(2) on a pipe and is woken every short batch's time by a
peer that computes meanwhile, reads one small pickled message and writes one back
(no mpiscore code at all): the least a rank can spend per batch if each batch wakes
it once. Needs ``onnx`` (pip install '.[test]'). Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, MPIEXEC, cores, environment
from overhead import dataset, mlp

HEAVY = (64, 1024, 1024, 16)


def trees(before: str | None, after: str | None) -> dict[str, Path]:
    found = {"after": Path(after).resolve() if after else HERE.parent}
    if before:
        found = {"before": Path(before).resolve(), **found}
    return found


def score(tree: Path, ranks: int, model: Path, data: Path, out: Path, batch_rows: int
          ) -> dict:
    """One job through ``tree``'s code; its summary's per-rank CPU."""
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
               "--model", str(model), "--input", f"{data}:/features", "--output", str(out),
               "--overwrite", "--mini-batch-size", str(batch_rows), "--intra-op-threads", "1",
               "--progress-seconds", "600", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          env=environment(tree), cwd=tree)
    if done.returncode:
        raise RuntimeError(f"{tree}: {' '.join(command)} failed:\n{done.stderr}")
    summary = json.loads((out.with_name(out.name + ".run") / "summary.json").read_text())
    per_rank = [{"rank": r["rank"], "loop_cpu_seconds": r["loop_cpu_seconds"],
                 "scorer_cpu_seconds": r["scorer_cpu_seconds"],
                 "loop_seconds": r["loop_seconds"], "batches": r["batches"],
                 "ratio": r["loop_cpu_seconds"] / max(r["scorer_cpu_seconds"], 1e-9)}
                for r in summary["per_rank"]]
    scored = [r for r in summary["per_rank"] if r["batches"]]
    return {"worst_ratio": max(r["ratio"] for r in per_rank),
            "rank_cpu_seconds": sum(r["loop_cpu_seconds"] for r in per_rank),
            "scorer_cpu_seconds": sum(r["scorer_cpu_seconds"] for r in per_rank),
            "loop_rows_per_second": summary["rows_scored"] / max(
                r["loop_seconds"] for r in summary["per_rank"]),
            "batch_seconds": sum(r["score_seconds"] for r in scored) / max(
                1, sum(r["batches"] for r in scored)),
            "per_rank": per_rank}


def median_run(runs: list[dict]) -> dict:
    """The round whose worst ratio is the median (the rounds are noisy on a shared machine)."""
    return sorted(runs, key=lambda r: r["worst_ratio"])[(len(runs) - 1) // 2]


def dispatch(tree: Path, ranks: int, batches: int) -> float:
    result = subprocess.run([sys.executable, str(tree / "benchmarks" / "dispatch.py"),
                             "--ranks", str(ranks), "--batches", str(batches)],
                            check=True, capture_output=True, text=True, timeout=600,
                            env=environment(tree), cwd=tree)
    report = json.loads(result.stdout[:result.stdout.rindex("}") + 1])
    return float(report["batches_per_second"])


def wakeup_floor(seconds: float, count: int = 200) -> dict:
    """CPU per wake-up of a process blocked in poll(2), woken every ``seconds`` by a
    peer that computes in between (so the waiter's caches are cold, as a rank's are)."""
    import numpy as np

    up_read, up_write = os.pipe()
    down_read, down_write = os.pipe()
    header = struct.Struct("!Q")
    pid = os.fork()
    if pid == 0:  # the peer: compute, then say so and wait for the answer
        a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
        for i in range(count):
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                a @ a[:, :64]
            data = pickle.dumps(("scored", i))
            os.write(up_write, header.pack(len(data)) + data)
            os.read(down_read, 65536)
        os._exit(0)
    poller = select.poll()
    poller.register(up_read, select.POLLIN)
    cpu = time.process_time()
    for i in range(count):
        poller.poll(10_000)
        (length,) = header.unpack(os.read(up_read, header.size))
        pickle.loads(os.read(up_read, length))
        data = pickle.dumps(("score", i))
        os.write(down_write, header.pack(len(data)) + data)
    cpu = time.process_time() - cpu
    os.waitpid(pid, 0)
    for fd in (up_read, up_write, down_read, down_write):
        os.close(fd)
    return {"interval_seconds": seconds, "wakeups": count,
            "cpu_us_per_wakeup": 1e6 * cpu / count, "share_of_interval": cpu / count / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the code before the change (a checkout)")
    parser.add_argument("--after", help="the code after it (default: this checkout)")
    parser.add_argument("--heavy-rows", type=int, default=400_000)
    parser.add_argument("--short-rows", type=int, default=200_000)
    parser.add_argument("--short-batch-rows", type=int, default=768)
    parser.add_argument("--many", type=int, default=8, help="ranks of the third job")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, interleaved; the median is reported, all in runs")
    parser.add_argument("--jobs", help="only these jobs, comma-separated (default: all)")
    parser.add_argument("--dispatch-ranks", type=int, default=8, help="0: no dispatch")
    parser.add_argument("--dispatch-batches", type=int, default=20_000)
    args = parser.parse_args()
    code = trees(args.before, args.after)
    jobs = {"heavy_n2": (2, "heavy", 16384), "short_n2": (2, "short", args.short_batch_rows),
            f"heavy_n{args.many}": (args.many, "heavy", 16384)}
    if args.jobs:
        jobs = {job: jobs[job] for job in args.jobs.split(",")}
    results: dict[str, dict[str, list[dict]]] = {job: {name: [] for name in code}
                                                 for job in jobs}
    speeds: dict[str, list[float]] = {name: [] for name in code}
    with tempfile.TemporaryDirectory(prefix="mpiscore-waiting-") as tmp:
        scratch = Path(tmp)
        model = mlp(scratch / "heavy.onnx", HEAVY)
        data = {"heavy": dataset(scratch / "heavy.h5", args.heavy_rows, HEAVY[0]),
                "short": dataset(scratch / "short.h5", args.short_rows, HEAVY[0])}
        for _ in range(args.repeat):  # interleaved: noise hits both trees alike
            for job, (ranks, rows, batch_rows) in jobs.items():
                for name, tree in code.items():
                    results[job][name].append(score(tree, ranks, model, data[rows],
                                                    scratch / f"{job}.{name}.h5", batch_rows))
            for name, tree in code.items():
                if args.dispatch_ranks:
                    speeds[name].append(dispatch(tree, args.dispatch_ranks,
                                                 args.dispatch_batches))
        short = [r["batch_seconds"] for by in results.get("short_n2", {}).values() for r in by]
        floor = wakeup_floor(statistics.median(short) if short else 0.01)
    best = {job: {name: median_run(runs) for name, runs in by.items()}
            for job, by in results.items()}
    data_out = {"benchmark": "waiting", "cores": cores(), "model": "x".join(map(str, HEAVY)),
                "short_batch_rows": args.short_batch_rows, "jobs": best,
                "dispatch_ranks": args.dispatch_ranks,
                "dispatch_batches_per_second": {n: statistics.median(s) for n, s in speeds.items()
                                                if s},
                "wakeup_floor": floor, "runs": results}
    print(json.dumps(data_out, indent=2))
    names = list(code)
    print(f"\n{'job':<12}{'tree':<8}{'worst rank/scorer CPU':>22}{'rank CPU s':>12}"
          f"{'scorer CPU s':>14}{'batch ms':>10}{'loop rows/s':>13}")
    for job, by in best.items():
        for name in names:
            r = by[name]
            print(f"{job:<12}{name:<8}{r['worst_ratio']:>21.2%}{r['rank_cpu_seconds']:>12.2f}"
                  f"{r['scorer_cpu_seconds']:>14.2f}{r['batch_seconds'] * 1e3:>10.1f}"
                  f"{r['loop_rows_per_second']:>13,.0f}")
    for name, speed in data_out["dispatch_batches_per_second"].items():
        print(f"dispatch, {args.dispatch_ranks} ranks, {name}: {speed:,.0f} batches/s")
    print(f"one wake-up every {floor['interval_seconds'] * 1e3:.1f} ms, nothing else: "
          f"{floor['cpu_us_per_wakeup']:.0f} us of CPU, {floor['share_of_interval']:.2%}")


if __name__ == "__main__":
    main()
