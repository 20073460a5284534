"""Where overlap wins: mpiscore's read-ahead and write-behind vs a read-score-write loop,
with the input in the page cache (warm) and evicted from it before every run (cold).

    python benchmarks/overlap.py [--light-rows 2000000] [--heavy-rows 100000] [--repeat 3]

light: MLP 64 -> 256 -> 256 -> 16 (I/O-bound); heavy: 64 -> 1024 -> 1024 -> 16
(compute-bound); float32 HDF5 ``/features`` in, HDF5 out, 16,384-row batches.
Contenders, whole processes, interleaved round by round: plain_loop.py (one
onnxruntime session using every core, each batch read, scored, written in
turn) and mpiscore ``-n 1 --procs-per-rank 1`` (one scoring process with every
core, which reads the next batch and writes the last one while it scores).

"cold": before each run the input is dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root needed: the file is written
and fsynced first, so no page is dirty). The script checks that it evicts by
timing a plain read of the file cold and warm (``read_check``); how much
latency that gives depends on the disk (a VM disk backed by the host's cache
is fast even cold).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import cores, mpiscore_command, plain_loop_command, timed
from overhead import BATCH_ROWS, dataset, mlp

MODELS = {"light": (64, 256, 256, 16), "heavy": (64, 1024, 1024, 16)}


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages only: fsync first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_seconds(path: Path) -> float:
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while handle.read(1 << 22):
            pass
    return time.perf_counter() - started


def read_check(path: Path, repeat: int) -> dict:
    """Whole-file read, cold (just evicted) and warm (read again), MB/s: does eviction
    give real latency here?"""
    cold, warm = [], []
    for _ in range(repeat):
        evict(path)
        cold.append(read_seconds(path))
        warm.append(read_seconds(path))
    mb = path.stat().st_size / 1e6
    return {"mb": round(mb, 1), "cold_seconds": statistics.median(cold),
            "warm_seconds": statistics.median(warm),
            "cold_mb_per_second": mb / statistics.median(cold),
            "warm_mb_per_second": mb / statistics.median(warm),
            "cold_over_warm": statistics.median(cold) / statistics.median(warm)}


def bench(kind: str, rows: int, repeat: int, scratch: Path) -> dict:
    model = mlp(scratch / f"{kind}.onnx", MODELS[kind])
    data = dataset(scratch / f"{kind}.h5", rows, MODELS[kind][0])
    with data.open("rb+") as handle:
        os.fsync(handle.fileno())  # clean pages, so DONTNEED can drop them
    jobs = {"plain_loop": plain_loop_command(model, data, scratch / "p.h5", BATCH_ROWS),
            "mpiscore_n1": mpiscore_command(1, model, data, scratch / "m.h5", BATCH_ROWS,
                                            "--procs-per-rank", "1")}
    seconds: dict[str, list[float]] = {f"{n}_{c}": [] for c in ("cold", "warm") for n in jobs}
    for _ in range(repeat):
        for cache in ("cold", "warm"):
            for name, command in jobs.items():
                if cache == "cold":
                    evict(data)
                else:
                    read_seconds(data)  # in the cache
                seconds[f"{name}_{cache}"].append(timed(command))
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    return {"benchmark": f"overlap_{kind}", "rows": rows, "cores": cores(),
            "model": "x".join(map(str, MODELS[kind])), "batch_rows": BATCH_ROWS,
            "read_check": read_check(data, repeat),
            "results": {name: {"median_seconds": medians[name], "runs": runs,
                               "rows_per_second": rows / medians[name]}
                        for name, runs in seconds.items()},
            "mpiscore_speedup_cold": medians["plain_loop_cold"] / medians["mpiscore_n1_cold"],
            "mpiscore_speedup_warm": medians["plain_loop_warm"] / medians["mpiscore_n1_warm"],
            "cold_cost_plain": medians["plain_loop_cold"] - medians["plain_loop_warm"],
            "cold_cost_mpiscore": medians["mpiscore_n1_cold"] - medians["mpiscore_n1_warm"]}


def table(reports: list[dict]) -> None:
    print(f"\n{'model':<7}{'cache':<6}{'plain s':>9}{'mpiscore s':>12}{'speedup':>9}"
          f"{'read MB/s':>11}")
    for r in reports:
        kind, res, check = r["benchmark"].split("_")[1], r["results"], r["read_check"]
        for cache in ("cold", "warm"):
            print(f"{kind:<7}{cache:<6}{res[f'plain_loop_{cache}']['median_seconds']:>9.2f}"
                  f"{res[f'mpiscore_n1_{cache}']['median_seconds']:>12.2f}"
                  f"{r[f'mpiscore_speedup_{cache}']:>8.2f}x"
                  f"{check[f'{cache}_mb_per_second']:>11,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-rows", type=int, default=2_000_000)
    parser.add_argument("--heavy-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-overlap-") as tmp:
        reports = [bench("light", args.light_rows, args.repeat, Path(tmp)),
                   bench("heavy", args.heavy_rows, args.repeat, Path(tmp))]
    for report in reports:
        print(json.dumps(report, indent=1))
    table(reports)


if __name__ == "__main__":
    main()
