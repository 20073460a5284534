"""Ranks hold only their work: memory, set-up and the broadcast job against the batch count.

    python benchmarks/plan_scale.py [--batches 10000 1000000] [--ranks 2] [--base CHECKOUT]
                                    [--files 10000] [--skip-files] [--file-items 100000]
                                    [--hdf5-items 10000]

For each batch count N, the example model scores N one-row batches (an HDF5
file of N rows, ``--mini-batch-size 1``) with ``mpiexec -n RANKS``; once the
first batch is in the journal every rank is stopped (SIGTERM, a graceful stop).
Reported per checkout: the peak RSS (VmHWM) of the largest rank process, of
rank 0's and of the largest other scoring process, set-up (launch to the first
journaled batch, and summary.json's slowest ``startup_seconds``), and the pickle
size of what rank 0 broadcasts and what each scoring process is sent (measured
by a probe that prepares the same job in one process and stops). ``--base``
runs another checkout (``git worktree add``) through ``PYTHONPATH``, side by side.

``--files F``: planning F small HDF5 files (describe, stat), serially and in
parallel (this checkout), and the base checkout's planning; ``--open-latency-ms``
adds a sleep before every file's open, as a parallel filesystem's metadata round
trip would (``--batches`` with no count skips the jobs).

``--hdf5-items F``: the same probe of a job of the example model over F small HDF5
files (described in forked processes from 1,000 files).

``--file-items F``: a file-input job (``--input-mode files``, an entry script,
``--mini-batch-size 10``) over F empty files, probed as above: the pickle sizes of
the broadcast and of the job a scoring process is sent, and how many paths the
job's source holds besides the plan's file table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, MPIEXEC, cores, environment

EXAMPLES = HERE.parent / "examples"
MODEL = EXAMPLES / "mlp_classifier.onnx"

PROBE = r"""
import json, pickle, sys
from mpiscore.rank import pool as pool_module, world as world_module
sizes = {}
original = world_module.World.from_rank_zero
def from_rank_zero(self, step, what):
    value = original(self, step, what)
    sizes["broadcast_bytes"] = len(pickle.dumps(value, protocol=5))
    return value
world_module.World.from_rank_zero = from_rank_zero
def start(self, spec, *more):
    sizes["spec_job_bytes"] = len(pickle.dumps(spec.job, protocol=5))
    resolved = spec.job.source.resolved  # file input: paths besides the plan's table
    own = len(getattr(resolved, "paths", ()))
    table = getattr(resolved, "files", None)
    if table is not None and table is not spec.job.plan.files:
        own += len(table)
    sizes["source_own_paths"] = own if spec.job.source.kind == "files" else None
    print("PROBE " + json.dumps(sizes), flush=True)
    raise SystemExit(0)
pool_module.ScorerPool.start = start
sys.argv = ["mpiscore", *sys.argv[1:]]
from mpiscore.cli import main
main()
"""

FILES_PROBE = r"""
import json, os, sys, time
from mpiscore.io import registry
from mpiscore.io.registry import InputSource
from mpiscore.io.sources import Hdf5Source
mode, folder, latency = sys.argv[1], sys.argv[2], float(sys.argv[3])
if latency:  # a metadata server's round trip before each open, as on a parallel filesystem
    from mpiscore.io import hdf5 as slowed
    opened = slowed._open_input
    def _open_input(path, opened=opened):
        time.sleep(latency)
        return opened(path)
    slowed._open_input = _open_input
paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
source = InputSource("hdf5", tuple(Hdf5Source(p, (("x", "/features"),)) for p in paths))
try:
    from mpiscore.io import hdf5, threads
    from mpiscore.journal import stamped
    if mode == "serial":
        hdf5.PROCESSES_FROM = threads.PARALLEL_FROM = 10**9
except ImportError:  # a checkout before parallel planning: its fingerprint stat-ed serially
    stamped = None
started = time.perf_counter()
files = registry.describe(source)[0]
if stamped is not None:
    stamped(files)
else:
    [os.stat(f.path) for f in files]
print(json.dumps({"files": len(files), "seconds": time.perf_counter() - started}))
"""


def score_args(data: Path, out: Path) -> list[str]:
    return ["score", "--model", str(MODEL), "--input", f"{data}:/features", "--output",
            str(out), "--overwrite", "--mini-batch-size", "1", "--quiet"]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found[1:]


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(root: int) -> tuple[list[int], dict[int, list[int]]]:
    """The rank processes under ``root`` and the scoring processes of each."""
    ranks, scorers = [], {}
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpiscore" in cmdline and b"score" in cmdline:
            ranks.append(pid)
    for rank in ranks:
        scorers[rank] = [pid for pid in descendants(rank)]
    return ranks, scorers


def run_job(tree: Path | None, ranks: int, data: Path, out: Path) -> dict:
    """Start the job, wait for its first journaled batch, read every process's peak RSS,
    stop it gracefully, and read its summary."""
    journal = Path(f"{out}.run/journal.txt")
    journal.unlink(missing_ok=True)
    started = time.perf_counter()
    job = subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore",
                            *score_args(data, out)], env=environment(tree),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           cwd=out.parent)  # not this checkout: PYTHONPATH picks the code
    first = None
    while job.poll() is None and time.perf_counter() - started < 900:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 2:  # header + a record
            first = time.perf_counter() - started
            break
        time.sleep(0.05)
    time.sleep(0.5)
    rank_pids, scorer_pids = processes(job.pid)
    rank_mib = {pid: hwm_mib(pid) for pid in rank_pids}
    scorer_mib = {pid: [hwm_mib(s) for s in scorer_pids[pid]] for pid in rank_pids}
    for pid in rank_pids:
        os.kill(pid, signal.SIGTERM)
    _, err = job.communicate(timeout=900)
    summary = json.loads(Path(f"{out}.run/summary.json").read_text())
    if not rank_pids:  # a tiny job ended before it was looked at: its summary's figures
        per_rank = summary.get("per_rank", [])
        rank_mib = {-1 - r["rank"]: 0.0 for r in per_rank}
        scorer_mib = {-1 - r["rank"]: [r["scorer_peak_rss_mib"]] for r in per_rank}
    # rank 0: launched first, with hydra's usual order (or -1, from the summary)
    zero = min(rank_pids) if rank_pids else -1
    others = [mib for pid, mibs in scorer_mib.items() if pid != zero for mib in mibs]
    return {"first_batch_wall_seconds": first, "status": summary.get("status"),
            "startup_seconds": max((r["startup_seconds"] for r in summary.get("per_rank", [])),
                                   default=None),
            "rank_peak_rss_mib": max(rank_mib.values(), default=0.0),
            "rank0_peak_rss_mib": rank_mib.get(zero, 0.0),
            "other_rank_peak_rss_mib": max((m for p, m in rank_mib.items() if p != zero),
                                           default=0.0),
            "scorer0_peak_rss_mib": max(scorer_mib.get(zero, []), default=0.0),
            "other_scorer_peak_rss_mib": max(others, default=0.0),
            "stderr_tail": err[-300:] if first is None else ""}


def probe(tree: Path | None, data: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *score_args(data, out)],
                            env=environment(tree), capture_output=True, text=True, timeout=900,
                            cwd=out.parent)
    for line in result.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return {"error": result.stderr[-300:]}


ENTRY_SCRIPT = """
def init():
    pass

def run(mini_batch):
    return [str(len(mini_batch))]
"""


def file_items(trees: dict[str, Path | None], count: int, scratch: Path) -> list[dict]:
    """Probe a file-input job over ``count`` empty files with each checkout."""
    folder = scratch / "items"
    folder.mkdir()
    for index in range(count):
        (folder / f"item-{index:07d}.txt").touch()
    script = scratch / "per_files.py"
    script.write_text(ENTRY_SCRIPT)
    args = ["score", "--entry-script", str(script), "--input", str(folder), "--input-mode",
            "files", "--output-action", "append_row", "--mini-batch-size", "10", "--quiet"]
    return probe_many(trees, "files", count, args, scratch / "items-{}.txt")


def hdf5_items(trees: dict[str, Path | None], count: int, scratch: Path) -> list[dict]:
    """Probe a job of the example model over ``count`` small HDF5 files."""
    folder = scratch / "h5items"
    folder.mkdir()
    make_files(folder, count)
    args = ["score", "--model", str(MODEL), "--input", f"{folder}/*.h5:/features", "--quiet"]
    return probe_many(trees, "hdf5", count, args, scratch / "h5items-{}.h5")


def probe_many(trees: dict[str, Path | None], kind: str, count: int, args: list[str],
               output: Path) -> list[dict]:
    """The probe of one job over many input files, with each checkout."""
    rows = []
    for label, tree in trees.items():
        out = Path(str(output).format(label))
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PROBE, *args, "--output", str(out),
                                 "--overwrite"], env=environment(tree), capture_output=True,
                                text=True, timeout=1800, cwd=output.parent)
        seconds = time.perf_counter() - started
        sizes = next((json.loads(line[6:]) for line in result.stdout.splitlines()
                      if line.startswith("PROBE ")), {"error": result.stderr[-300:]})
        rows.append({"checkout": label, "kind": kind, "files": count,
                     "probe_seconds": seconds, **sizes})
    return rows


def make_files(folder: Path, count: int) -> None:
    subprocess.run([sys.executable, "-c", (
        "import h5py, numpy as np, sys\n"
        "x = np.zeros((10, 16), np.float32)\n"
        "for i in range(int(sys.argv[2])):\n"
        "    with h5py.File(f'{sys.argv[1]}/f{i:06d}.h5', 'w') as f:\n"
        "        f.create_dataset('features', data=x, chunks=(5, 16))\n"),
        str(folder), str(count)], check=True, timeout=1800)


def plan_files(trees: dict[str, Path | None], count: int, scratch: Path,
               latency_ms: float) -> dict:
    folder = scratch / "many"
    folder.mkdir()
    make_files(folder, count)
    results = {}
    for label, tree in trees.items():
        modes = ["serial", "parallel"] if label == "after" else ["as is"]
        for mode in modes:
            result = subprocess.run([sys.executable, "-c", FILES_PROBE, mode, str(folder),
                                     str(latency_ms / 1000)],
                                    env=environment(tree), capture_output=True, text=True,
                                    check=True, timeout=1800, cwd=scratch)
            results[f"{label} {mode}"] = json.loads(result.stdout)["seconds"]
    return {"files": count, "open_latency_ms": latency_ms, "seconds": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--base", type=Path, help="another mpiscore checkout, run alongside")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--open-latency-ms", type=float, default=0.0,
                        help="add this much latency to every input file's open (many files)")
    parser.add_argument("--file-items", type=int, default=0,
                        help="also probe a file-input job over this many files")
    parser.add_argument("--hdf5-items", type=int, default=0,
                        help="also probe a job over this many small HDF5 files")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"after": HERE.parent}
    if args.base:
        trees = {"before": args.base.resolve(), **trees}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpiscore-plan-") as tmp:
        scratch = Path(tmp)
        for batches in args.batches:
            folder = scratch / str(batches)
            subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), "--rows",
                            str(batches), "--out", str(folder)], check=True,
                           capture_output=True)
            data = folder / "blobs.h5"
            for label, tree in trees.items():
                out = folder / f"out-{label}.h5"
                rows.append({"checkout": label, "batches": batches,
                             **probe(tree, data, out), **run_job(tree, args.ranks, data, out)})
        files = None if args.skip_files else plan_files(trees, args.files, scratch,
                                                        args.open_latency_ms)
        items = file_items(trees, args.file_items, scratch) if args.file_items else []
        if args.hdf5_items:
            items += hdf5_items(trees, args.hdf5_items, scratch)
    print(json.dumps({"benchmark": "plan_scale", "ranks": args.ranks, "cores": cores(),
                      "results": rows, "many_files": files, "file_input": items}, indent=2))
    print(f"\n{'checkout':<8}{'batches':>10}{'broadcast':>12}{'to scorer':>12}{'set-up s':>10}"
          f"{'rank0 MiB':>11}{'rank MiB':>10}{'scorer0':>9}{'scorer':>8}")
    for r in rows:
        first = r["first_batch_wall_seconds"]
        shown = "-" if first is None else f"{first:.1f}"
        print(f"{r['checkout']:<8}{r['batches']:>10,}{r.get('broadcast_bytes', 0):>12,}"
              f"{r.get('spec_job_bytes', 0):>12,}{shown:>10}"
              f"{r['rank0_peak_rss_mib']:>11.0f}{r['other_rank_peak_rss_mib']:>10.0f}"
              f"{r['scorer0_peak_rss_mib']:>9.0f}{r['other_scorer_peak_rss_mib']:>8.0f}")
    if items:
        print(f"\n{'checkout':<9}{'input':<7}{'files':>9}{'broadcast':>12}{'to scorer':>12}"
              f"{'own paths':>11}")
        for r in items:
            own = r.get("source_own_paths")
            print(f"{r['checkout']:<9}{r['kind']:<7}{r['files']:>9,}"
                  f"{r.get('broadcast_bytes', 0):>12,}"
                  f"{r.get('spec_job_bytes', 0):>12,}{'-' if own is None else own:>11}")
    if files:
        print(f"\nplanning {files['files']:,} HDF5 files "
              f"(+{files['open_latency_ms']} ms an open):")
        for mode, seconds in files["seconds"].items():
            print(f"  {mode:<18}{seconds:>8.2f} s")


if __name__ == "__main__":
    main()
