"""Start-up: time to first batch at 1, 2, 8 and 32 ranks, and what each process imports.

    python benchmarks/startup.py [--ranks 1 2 8 32] [--repeat 3] [--base /tmp/base]

The example job (16 -> 64 -> 4 MLP, HDF5 in and out), small batches so every
rank gets some. Per run: ``summary.json``'s ``first_batch_seconds`` and
``startup_seconds`` (the slowest rank; both counted from ``api.run``, so
interpreter start, imports and MPI start-up are not in them) and, from the
events files' wall-clock stamps against the launch time, the whole-process
time from ``mpiexec`` to the job's first finished batch and until every rank
has started its scoring loop (the slowest rank's "start" event). ``--base``
names another checkout of mpiscore (``git worktree add``), run side by side,
round by round, through ``PYTHONPATH``.

Imports and files per process, from one ``-n 1`` run each under ``strace -ff``
with ``PYTHONPROFILEIMPORTTIME=1``: the modules each process imported (one
``-X importtime`` line each: frozen and built-in modules included), before the
rank's first batch and in all, and the files it opened (opened / failed
look-ups, for the rank before its first batch). Without a usable strace, the
import counts come from stderr instead (rank: ``-X importtime``; scoring
process: the environment variable's total less the rank's) and files are null.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, MPIEXEC, cores, environment, example_data

MODEL = HERE.parent / "examples" / "mlp_classifier.onnx"
IMPORT_LINE = re.compile(r'^(\d+\.\d+) write\(2, "import time:\s+\d')
OPEN_LINE = re.compile(r"^(\d+\.\d+) openat\(.*\) = (-?\d+)")


def command(ranks: int, data: Path, out: Path, batch_rows: int, *python: str) -> list[str]:
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    return [MPIEXEC, "-n", str(ranks), sys.executable, *python, "-m", "mpiscore", "score",
            "--model", str(MODEL), "--input", f"{data}:/features", "--output", str(out),
            "--overwrite", "--mini-batch-size", str(batch_rows)]


def first_batches(run_dir: Path) -> tuple[list[float], list[float]]:
    """Wall clock, from the events files: when each rank's scoring loop started, and
    each rank's first finished batch (ranks that scored one)."""
    starts, firsts = [], []
    for path in sorted((run_dir / "events").glob("rank-*.jsonl")):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        starts += [e["t"] for e in events if e.get("k") == "start"][:1]
        ends = [e["end"] for e in events if e.get("k") == "b" and e.get("out") == "ok"]
        firsts += [min(ends)] if ends else []
    return starts, firsts


def timed_run(ranks: int, tree: Path, data: Path, out: Path, batch_rows: int) -> dict:
    shutil.rmtree(out.with_name(out.name + ".run"), ignore_errors=True)  # no stale events
    launched = time.time()
    subprocess.run(command(ranks, data, out, batch_rows), env=environment(tree), check=True,
                   capture_output=True, text=True, timeout=600)
    wall = time.time() - launched
    run_dir = out.with_name(out.name + ".run")
    per_rank = json.loads((run_dir / "summary.json").read_text())["per_rank"]
    starts, firsts = first_batches(run_dir)
    return {"wall": wall, "ranks_that_scored": len(firsts),
            "launch_to_first_batch": min(firsts) - launched,
            "launch_to_every_rank_scoring": max(starts) - launched,
            "first_batch_seconds": max(s["first_batch_seconds"] for s in per_rank
                                       if s["first_batch_seconds"] is not None),
            "startup_seconds": max(s["startup_seconds"] for s in per_rank)}


def strace_works() -> bool:
    strace = shutil.which("strace")
    return strace is not None and subprocess.run(
        [strace, "-o", os.devnull, "true"], capture_output=True, timeout=60).returncode == 0


def traced_counts(tree: Path, data: Path, out: Path, batch_rows: int, scratch: Path) -> dict:
    """Imports and opened files of the rank and its scoring process, one -n 1 run."""
    shutil.rmtree(out.with_name(out.name + ".run"), ignore_errors=True)
    traces = scratch / "strace"
    shutil.rmtree(traces, ignore_errors=True)
    traces.mkdir()
    subprocess.run(["strace", "-ff", "-qq", "-ttt", "-s", "64", "-e",
                    "trace=execve,openat,write", "-o", str(traces / "p"),
                    *command(1, data, out, batch_rows)],
                   env={**environment(tree), "PYTHONPROFILEIMPORTTIME": "1"}, check=True,
                   capture_output=True, timeout=600)
    (first,) = first_batches(out.with_name(out.name + ".run"))[1]
    counts: dict[str, dict] = {}
    for path in traces.iterdir():
        lines = path.read_text(errors="replace").splitlines()
        head = next((line for line in lines if " execve(" in line), "")
        program = Path(head.partition('execve("')[2].partition('"')[0]).name
        role = (None if not program.startswith("python") else
                "scorer" if '"-S", "-c"' in head else
                "rank" if '"mpiscore", "score"' in head else None)
        if role is None:
            continue
        imports = [float(m[1]) for m in map(IMPORT_LINE.match, lines) if m]
        opens = [(float(m[1]), int(m[2]) >= 0) for m in map(OPEN_LINE.match, lines) if m]
        counts[role] = {
            "imports": len(imports),
            "imports_before_first_batch": sum(t < first for t in imports),
            "files_opened": sum(ok for _, ok in opens),
            "files_failed": sum(not ok for _, ok in opens),
            "files_opened_before_first_batch": sum(ok and t < first for t, ok in opens)}
    return counts


def stderr_counts(tree: Path, data: Path, out: Path, batch_rows: int) -> dict:
    """Without strace: import lines on stderr (the rank's alone, then everyone's)."""
    def lines(*python: str, env: dict[str, str]) -> int:
        done = subprocess.run(command(1, data, out, batch_rows, *python), env=env, check=True,
                              capture_output=True, text=True, timeout=600)
        return sum(line.startswith("import time:") and "[us]" not in line
                   for line in done.stderr.splitlines())
    rank = lines("-X", "importtime", env=environment(tree))
    both = lines(env={**environment(tree), "PYTHONPROFILEIMPORTTIME": "1"})
    return {"rank": {"imports": rank}, "scorer": {"imports": both - rank}}


def table(data: dict) -> None:
    trees = list(data["trees"])
    print(f"\n{'ranks':>5} {'tree':<8}{'to 1st batch':>13}{'every rank in':>14}"
          f"{'first_batch_s':>14}{'startup_s':>10}{'wall':>8}")
    for ranks, by_tree in data["results"].items():
        for tree in trees:
            r = by_tree[tree]
            print(f"{ranks:>5} {tree:<8}{r['launch_to_first_batch']:>13.2f}"
                  f"{r['launch_to_every_rank_scoring']:>14.2f}"
                  f"{r['first_batch_seconds']:>14.3f}{r['startup_seconds']:>10.3f}"
                  f"{r['wall']:>8.2f}")
    print(f"\n{'tree':<8}{'process':<8}{'imports':>8}{'before 1st':>11}{'files':>7}"
          f"{'failed':>8}")
    for tree, roles in data["imports"].items():
        for role, c in sorted(roles.items()):
            print(f"{tree:<8}{role:<8}{c['imports']:>8}"
                  f"{c.get('imports_before_first_batch', '-')!s:>11}"
                  f"{c.get('files_opened', '-')!s:>7}{c.get('files_failed', '-')!s:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 8, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--batches-per-rank", type=int, default=8)
    parser.add_argument("--base", type=Path, help="another mpiscore checkout, run alongside")
    args = parser.parse_args()
    trees = {"current": HERE.parent}
    if args.base:
        trees = {"base": args.base.resolve(), **trees}
    with tempfile.TemporaryDirectory(prefix="mpiscore-startup-") as tmp:
        scratch = Path(tmp)
        rows = max(args.ranks) * args.batches_per_rank * args.batch_rows
        data_file = example_data(scratch, rows)
        out = scratch / "out.h5"
        runs: dict[int, dict[str, list[dict]]] = {n: {t: [] for t in trees} for n in args.ranks}
        for _ in range(args.repeat):  # round by round, every tree at every size
            for ranks in args.ranks:
                for name, tree in trees.items():
                    runs[ranks][name].append(
                        timed_run(ranks, tree, data_file, out, args.batch_rows))
        traced = strace_works()
        imports = {name: (traced_counts if traced else stderr_counts)(
            tree, data_file, out, args.batch_rows, *([scratch] if traced else []))
            for name, tree in trees.items()}
    results = {str(n): {t: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                        | {"runs": rs} for t, rs in by_tree.items()}
               for n, by_tree in runs.items()}
    data = {"benchmark": "startup", "cores": cores(), "rows": rows,
            "batch_rows": args.batch_rows, "repeat": args.repeat,
            "trees": {k: str(v) for k, v in trees.items()},
            "import_counts_from": "strace" if traced else "stderr", "results": results,
            "imports": imports}
    print(json.dumps(data, indent=1))
    table(data)


if __name__ == "__main__":
    main()
