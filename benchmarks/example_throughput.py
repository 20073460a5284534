"""Rows/s of the example job: mpiscore at -n 1 and -n 2 vs a plain onnxruntime loop.

    python benchmarks/example_throughput.py [--rows 1000000] [--repeat 3]

Each contender runs as its own process (whole-process wall time: interpreter
start, imports, MPI start-up included), interleaved round by round so machine
noise hits all alike; medians and ratios to the plain loop are printed as
JSON, then as a table. The plain loop is what a user would write by hand:
read a batch from HDF5, score it with one session using every core, write it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MODEL = EXAMPLES / "mlp_classifier.onnx"
BATCH_ROWS = 65536


def plain_loop(data: Path, out: Path, threads: int) -> None:
    """The hand-written reference: read, score, write, batch after batch, one process."""
    import h5py
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    with h5py.File(data, "r") as source, h5py.File(out, "w") as target:
        features = source["features"]
        rows = len(features)
        outputs = None
        for start in range(0, rows, BATCH_ROWS):
            results = session.run(names, {"features": features[start:start + BATCH_ROWS]})
            if outputs is None:
                outputs = [target.create_dataset(n, (rows, *r.shape[1:]), r.dtype)
                           for n, r in zip(names, results, strict=True)]
            for dataset, result in zip(outputs, results, strict=True):
                dataset[start:start + len(result)] = result


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def contenders(data: Path, scratch: Path) -> dict[str, list[str]]:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cores = len(os.sched_getaffinity(0))

    def mpiscore(ranks: int) -> list[str]:
        return [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
                "--model", str(MODEL), "--input", f"{data}:/features", "--overwrite",
                "--output", str(scratch / f"mpiscore-n{ranks}.h5"),
                "--mini-batch-size", str(BATCH_ROWS)]

    plain = [sys.executable, __file__, "--plain", str(data), str(scratch / "plain.h5"),
             str(cores)]
    return {"plain_onnxruntime_loop": plain, "mpiscore_n1": mpiscore(1),
            "mpiscore_n2": mpiscore(2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(Path(args.plain[0]), Path(args.plain[1]), int(args.plain[2]))
        return
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), "--rows", str(args.rows),
                        "--out", str(scratch)], check=True, capture_output=True)
        jobs = contenders(scratch / "blobs.h5", scratch)
        seconds: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeat):
            for name, command in jobs.items():
                seconds[name].append(timed(command))
    report(args.rows, seconds)


def report(rows: int, seconds: dict[str, list[float]]) -> None:
    base = statistics.median(seconds["plain_onnxruntime_loop"])
    results = {name: {"median_seconds": statistics.median(runs),
                      "rows_per_second": rows / statistics.median(runs),
                      "speed_vs_plain_loop": base / statistics.median(runs),
                      "runs": runs}
               for name, runs in seconds.items()}
    print(json.dumps({"benchmark": "example_throughput", "rows": rows,
                      "cores": len(os.sched_getaffinity(0)), "results": results}, indent=2))
    print(f"\n{'contender':<26}{'median s':>10}{'rows/s':>14}{'vs plain':>10}")
    for name, r in results.items():
        print(f"{name:<26}{r['median_seconds']:>10.2f}{r['rows_per_second']:>14,.0f}"
              f"{r['speed_vs_plain_loop']:>9.2f}x")


if __name__ == "__main__":
    main()
