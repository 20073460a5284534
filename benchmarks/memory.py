"""Peak memory of a scoring process: bounded by model + a few batches, not the dataset size.

    python benchmarks/memory.py [--rows 1000000 8000000] [--batch-rows 65536]

Scores the example job over datasets of different sizes with ``mpiexec -n 1``
and reports the peak resident memory of the largest scoring process
(``scorer_peak_rss_mib`` in summary.json), next to the size of the input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HERE, mpiscore_command

EXAMPLES = HERE.parent / "examples"


def peak(rows: int, batch_rows: int, scratch: Path) -> dict:
    folder = scratch / str(rows)
    subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), "--rows", str(rows),
                    "--out", str(folder)], check=True, capture_output=True)
    data, out = folder / "blobs.h5", folder / "labels.h5"
    subprocess.run(mpiscore_command(1, EXAMPLES / "mlp_classifier.onnx", data, out, batch_rows),
                   check=True, capture_output=True, timeout=1800)
    summary = json.loads(Path(f"{out}.run/summary.json").read_text())
    return {"rows": rows, "input_mib": data.stat().st_size / 2**20,
            "scorer_peak_rss_mib": max(r["scorer_peak_rss_mib"] for r in summary["per_rank"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 8_000_000])
    parser.add_argument("--batch-rows", type=int, default=65536)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        results = [peak(rows, args.batch_rows, Path(tmp)) for rows in args.rows]
    print(json.dumps({"benchmark": "memory", "batch_rows": args.batch_rows,
                      "results": results}, indent=2))
    print(f"\n{'rows':>12}{'input MiB':>12}{'scorer peak MiB':>18}")
    for r in results:
        print(f"{r['rows']:>12,}{r['input_mib']:>12.0f}{r['scorer_peak_rss_mib']:>18.0f}")


if __name__ == "__main__":
    main()
