"""Rows/s of the example job: mpiscore at -n 1 and -n 2 vs a plain onnxruntime loop.

    python benchmarks/example_throughput.py [--rows 1000000] [--repeat 3]

Each contender runs as its own process (whole-process wall time: interpreter
start, imports, MPI start-up included), interleaved round by round; medians
and ratios to the plain loop (plain_loop.py) are printed as JSON, then a table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import HERE, example_data, interleaved, mpiscore_command, plain_loop_command, report

EXAMPLES = HERE.parent / "examples"
MODEL = EXAMPLES / "mlp_classifier.onnx"
BATCH_ROWS = 65536


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        data = example_data(scratch, args.rows)
        jobs = {"plain_onnxruntime_loop": plain_loop_command(MODEL, data, scratch / "plain.h5",
                                                             BATCH_ROWS)}
        for ranks in (1, 2):
            jobs[f"mpiscore_n{ranks}"] = mpiscore_command(
                ranks, MODEL, data, scratch / f"n{ranks}.h5", BATCH_ROWS)
        seconds = interleaved(jobs, args.repeat)
    report("example_throughput", args.rows, seconds, "plain_onnxruntime_loop",
           batch_rows=BATCH_ROWS)


if __name__ == "__main__":
    main()
