"""What waiting costs: each rank process's CPU against its scoring processes', and how
fast rank 0 still dispatches, for two code trees side by side in one run.

    python benchmarks/waiting.py [--before DIR] [--after DIR] [--heavy-rows 400000]
                                 [--short-rows 200000] [--short-batch-rows 768]
                                 [--many 8] [--repeat 1]
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
run through PYTHONPATH; "after" is this checkout, or ``--after DIR``. Needs ``onnx`` (pip install
'.[test]'). Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HERE, MPIEXEC, cores
from overhead import dataset, mlp

HEAVY = (64, 1024, 1024, 16)


def trees(before: str | None, after: str | None) -> dict[str, Path]:
    found = {"after": Path(after).resolve() if after else HERE.parent}
    if before:
        found = {"before": Path(before).resolve(), **found}
    return found


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}


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
    parser.add_argument("--dispatch-ranks", type=int, default=8)
    parser.add_argument("--dispatch-batches", type=int, default=20_000)
    args = parser.parse_args()
    code = trees(args.before, args.after)
    jobs = {"heavy_n2": (2, "heavy", 16384), "short_n2": (2, "short", args.short_batch_rows),
            f"heavy_n{args.many}": (args.many, "heavy", 16384)}
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
                speeds[name].append(dispatch(tree, args.dispatch_ranks, args.dispatch_batches))
    best = {job: {name: median_run(runs) for name, runs in by.items()}
            for job, by in results.items()}
    data_out = {"benchmark": "waiting", "cores": cores(), "model": "x".join(map(str, HEAVY)),
                "short_batch_rows": args.short_batch_rows, "jobs": best,
                "dispatch_ranks": args.dispatch_ranks,
                "dispatch_batches_per_second": {n: statistics.median(s) for n, s in speeds.items()},
                "runs": results}
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
    for name in names:
        print(f"dispatch, {args.dispatch_ranks} ranks, {name}: "
              f"{data_out['dispatch_batches_per_second'][name]:,.0f} batches/s")


if __name__ == "__main__":
    main()
