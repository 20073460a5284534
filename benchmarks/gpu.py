"""The heavy model on a GPU (issue 15 target 7): mpiscore with the CUDA execution provider
against a hand-written onnxruntime CUDA loop, whole processes, in one run.

    python benchmarks/gpu.py [--rows 2000000] [--batch-rows 16384 131072] [--repeat 3]
                             [--ranks 1 2] [--provider CUDAExecutionProvider]

The job: the heavy MLP (64 -> 1024 -> 1024 -> 16, peers.py's) over ``--rows`` float32
rows of HDF5 ``/features``, output to HDF5. For each batch size, contenders, rounds
interleaved, medians of whole-process wall (interpreter, imports, CUDA's start-up
included):
- ``plain_loop``: plain_loop.py on the provider, one session: read a batch, run it,
  write it, in turn; what a user writes first;
- ``mpiscore_nR``: ``mpiscore -n R --procs-per-rank 1 --providers P,CPUExecutionProvider``,
  one scoring process per rank (so one CUDA session each), R ranks on the node's GPUs
  (node-local rank modulo the GPUs: with one GPU, ``-n 2`` shares it between two
  processes), reading ahead and writing behind while the GPU runs.
Every output is checked against the loop's. The table gives rows/s and speed against
the loop, and mpiscore's own split (start-up, loop; read, score and write seconds
summed over ranks, from summary.json).

Where the provider is not there (``onnxruntime`` rather than ``onnxruntime-gpu``, or no
GPU), mpiscore stops with one line saying why, and so does this script. ``--provider
CPUExecutionProvider`` runs the same harness on the CPU; CI's smoke test does, on tiny
sizes. On the device machine, onnxruntime-gpu must be brought along (see
benchmarks/README.md, "GPU").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HEAVY = (64, 1024, 1024, 16)


def contenders(scratch: Path, model: Path, data: Path, batch_rows: int, ranks: list[int],
               provider: str) -> dict[str, tuple[list[str], Path]]:
    """Each contender's command and output, for one batch size."""
    def out(name: str) -> Path:
        return scratch / f"{name}.{batch_rows}.h5"

    providers = provider if provider == "CPUExecutionProvider" else \
        f"{provider},CPUExecutionProvider"
    jobs = {"plain_loop": (plain_loop_command(model, data, out("loop"), batch_rows, 2,
                                              providers), out("loop"))}
    for n in ranks:
        jobs[f"mpiscore_n{n}"] = (mpiscore_command(
            n, model, data, out(f"n{n}"), batch_rows, "--procs-per-rank", "1",
            "--providers", providers, "--intra-op-threads", "2", "--quiet"), out(f"n{n}"))
    return jobs


def run(command: list[str]) -> float:
    """Wall seconds of one whole process; its own error line if it fails."""
    try:
        return timed(command)
    except subprocess.CalledProcessError as failed:
        last = (failed.stderr or failed.stdout or "").strip().splitlines()[-1:]
        sys.exit(f"gpu.py: {Path(command[0]).name} failed: {' '.join(last) or failed}")


def mpiscore_split(out: Path) -> dict[str, float]:
    """summary.json's start-up and loop (slowest rank), and stage seconds over ranks."""
    summary = json.loads((out.with_name(out.name + ".run") / "summary.json").read_text())
    ranks = summary["per_rank"]
    return {"startup": round(max(r["startup_seconds"] for r in ranks), 3),
            "loop": round(max(r["loop_seconds"] for r in ranks), 3),
            **{key: round(sum(r[key] for r in ranks), 3)
               for key in ("read_seconds", "score_seconds", "write_seconds")},
            "gpus": sorted({str(r.get("gpu")) for r in ranks})}


def check_outputs(jobs: dict[str, tuple[list[str], Path]]) -> float:
    """The largest difference from the loop's scores (same provider, same kernels)."""
    with h5py.File(jobs["plain_loop"][1], "r") as handle:
        reference = handle["scores"][()]
    worst = 0.0
    for name, (_, out) in jobs.items():
        with h5py.File(out, "r") as handle:
            scores = handle["scores"][()]
        np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-4, err_msg=name)
        worst = max(worst, float(np.max(np.abs(scores - reference))))
    return worst


def measure(batch_rows: int, jobs: dict[str, tuple[list[str], Path]], rows: int,
            repeat: int) -> dict:
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    splits: dict[str, dict] = {}
    for _ in range(repeat):
        for name, (command, out) in jobs.items():
            seconds[name].append(round(run(command), 3))
            if name != "plain_loop":
                splits[name] = mpiscore_split(out)  # the last round's
    loop = statistics.median(seconds["plain_loop"])
    results = {name: {"median_seconds": statistics.median(runs),
                      "rows_per_second": round(rows / statistics.median(runs)),
                      "speed_vs_loop": round(loop / statistics.median(runs), 3), "runs": runs,
                      **({"mpiscore": splits[name]} if name in splits else {})}
               for name, runs in seconds.items()}
    return {"batch_rows": batch_rows, "max_abs_diff_vs_loop": check_outputs(jobs),
            "results": results}


def table(report: dict) -> None:
    print(f"\n{'batch rows':>10}  {'contender':<14}{'median s':>10}{'rows/s':>13}"
          f"{'vs loop':>9}  mpiscore: start-up / loop / read / score / write s")
    for size in report["batch_sizes"]:
        for name, r in size["results"].items():
            split = r.get("mpiscore")
            where = "" if split is None else "  " + " / ".join(
                str(split[k]) for k in ("startup", "loop", "read_seconds", "score_seconds",
                                        "write_seconds"))
            print(f"{size['batch_rows']:>10}  {name:<14}{r['median_seconds']:>10.2f}"
                  f"{r['rows_per_second']:>13,}{r['speed_vs_loop']:>8.2f}x{where}")


def gpu_name() -> str | None:
    """What nvidia-smi calls the first GPU, or None where there is none."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout \
        else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, nargs="+", default=[16384, 131072])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--provider", default="CUDAExecutionProvider")
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mpiscore-gpu-") as tmp:
        scratch = Path(tmp)
        model = mlp(scratch / "heavy.onnx", HEAVY)
        data = dataset(scratch / "heavy.h5", args.rows, HEAVY[0])
        sizes = [measure(b, contenders(scratch, model, data, b, args.ranks, args.provider),
                         args.rows, args.repeat) for b in args.batch_rows]
    report = {"benchmark": "gpu", "provider": args.provider, "gpu": gpu_name(),
              "onnxruntime": f"{ort.__version__} ({ort.get_device()})", "rows": args.rows,
              "model": "x".join(map(str, HEAVY)), "cores": cores(), "repeat": args.repeat,
              "outputs_match": True, "batch_sizes": sizes}
    print(json.dumps(report, indent=1))
    table(report)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cores, mpiscore_command, plain_loop_command, timed
    from overhead import dataset, mlp

    main()
