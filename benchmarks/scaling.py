"""Strong and weak scaling of mpiscore over ranks and scoring processes per rank.

    python benchmarks/scaling.py [--rows-per-core 1000000] [--max-cores N] [--repeat 3]
                                 [--plot benchmarks/scaling.png]

Light MLP of overhead.py, HDF5 in and out. For every layout of ranks x
processes per rank up to the machine's cores: strong scaling scores a fixed
dataset (rows-per-core x max-cores rows); weak scaling scores rows-per-core x
(ranks x processes). Throughput is taken inside the job (rows over the
scoring loop's wall time, ``loop_seconds`` in summary.json) and for the
whole process; efficiency is rows/s per core relative to 1 rank x 1 process.
JSON, a table, and with ``--plot FILE.png`` a chart (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import cores, mpiscore_command, timed
from overhead import MODELS, dataset, mlp

BATCH_ROWS = 16384


def layouts(max_cores: int) -> list[tuple[int, int]]:
    return [(r, p) for n in range(1, max_cores + 1) for r in range(1, n + 1)
            for p in [n // r] if r * p == n]


def run(ranks: int, procs: int, model: Path, data: Path, out: Path) -> dict[str, float]:
    command = mpiscore_command(ranks, model, data, out, BATCH_ROWS, "--procs-per-rank",
                               str(procs), "--intra-op-threads", "1")
    wall = timed(command)
    summary = json.loads(Path(f"{out}.run/summary.json").read_text())
    loop = max(r["loop_seconds"] for r in summary["per_rank"])
    return {"wall_seconds": wall, "loop_seconds": loop, "rows": summary["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-core", type=int, default=1_000_000)
    parser.add_argument("--max-cores", type=int, default=cores())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write a PNG here (needs matplotlib)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        model = mlp(scratch / "light.onnx", MODELS["light"])
        width = MODELS["light"][0]
        sizes = {n: dataset(scratch / f"x{n}.h5", args.rows_per_core * n, width)
                 for n in range(1, args.max_cores + 1)}
        for mode in ("strong", "weak"):
            for ranks, procs in layouts(args.max_cores):
                data = sizes[args.max_cores] if mode == "strong" else sizes[ranks * procs]
                runs = [run(ranks, procs, model, data, scratch / "out.h5")
                        for _ in range(args.repeat)]
                results.append({"mode": mode, "ranks": ranks, "procs_per_rank": procs,
                                "rows": runs[0]["rows"],
                                "loop_seconds": statistics.median(x["loop_seconds"] for x in runs),
                                "wall_seconds": statistics.median(x["wall_seconds"] for x in runs)})
    add_efficiency(results)
    print(json.dumps({"benchmark": "scaling", "cores": cores(), "results": results}, indent=2))
    print(f"\n{'mode':<8}{'ranks':>6}{'procs':>6}{'rows':>11}{'loop s':>8}{'wall s':>8}"
          f"{'rows/s (loop)':>15}{'efficiency':>12}")
    for r in results:
        print(f"{r['mode']:<8}{r['ranks']:>6}{r['procs_per_rank']:>6}{r['rows']:>11,}"
              f"{r['loop_seconds']:>8.2f}{r['wall_seconds']:>8.2f}"
              f"{r['rows_per_second_in_loop']:>15,.0f}{r['efficiency']:>12.2f}")
    if args.plot:
        plot(results, args.plot)


def add_efficiency(results: list[dict]) -> None:
    """Rows/s in the scoring loop, and that per core relative to 1 rank x 1 process."""
    for r in results:
        r["rows_per_second_in_loop"] = r["rows"] / r["loop_seconds"]
    for r in results:
        base = next(b for b in results if b["mode"] == r["mode"] and
                    b["ranks"] * b["procs_per_rank"] == 1)
        units = r["ranks"] * r["procs_per_rank"]
        r["efficiency"] = r["rows_per_second_in_loop"] / base["rows_per_second_in_loop"] / units


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, mode in zip(axes, ("strong", "weak"), strict=True):
        rows = [r for r in results if r["mode"] == mode]
        labels = [f"{r['ranks']}x{r['procs_per_rank']}" for r in rows]
        axis.bar(labels, [r["rows_per_second_in_loop"] for r in rows])
        axis.set_title(f"{mode} scaling (ranks x procs)")
        axis.set_ylabel("rows/s in the scoring loop")
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
