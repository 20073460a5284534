"""Wall time of one job with Parquet output vs the same job with HDF5 output, side by side.

    python benchmarks/parquet_output.py [--rows 2000000] [--repeat 3] [--ranks 2]
                                        [--mini-batch-size 4MiB]

The example job (examples/make_data.py's HDF5 input, the shipped classifier)
writes ``out.h5`` and ``out.parquet`` in turn, interleaved round by round
(whole-process walls: start-up, scoring, flushing and finishing the output).
Parquet output writes every batch once as its final part file, so its wall
should be about HDF5's: ``parquet_over_hdf5_wall`` is the ratio of medians
(Parquet wall / HDF5 wall). JSON, then a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import HERE, example_data, interleaved, mpiscore_command, report

EXAMPLES = HERE.parent / "examples"
MODEL = EXAMPLES / "mlp_classifier.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mini-batch-size", default="4MiB", help="mpiscore's default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        data = example_data(scratch, args.rows)
        jobs = {f"{kind}_output": mpiscore_command(args.ranks, MODEL, data,
                                                   scratch / f"out.{suffix}",
                                                   args.mini_batch_size)
                for kind, suffix in (("hdf5", "h5"), ("parquet", "parquet"))}
        seconds = interleaved(jobs, args.repeat)
        files = len(list((scratch / "out.parquet").iterdir()))
    ratio = statistics.median(seconds["parquet_output"]) / statistics.median(seconds["hdf5_output"])
    report("parquet_output", args.rows, seconds, "hdf5_output", ranks=args.ranks,
           mini_batch_size=args.mini_batch_size, parquet_files=files,
           parquet_over_hdf5_wall=ratio)
    print(f"\nParquet wall / HDF5 wall: {ratio:.2f} ({files} part files)")


if __name__ == "__main__":
    main()
