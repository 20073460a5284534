"""Entry scripts vs ONNX: the tabular example through its entry script and as the same
model in ONNX, and the file example, at -n 1 and -n 2, side by side in one run.

    python benchmarks/scripts.py [--rows 1000000] [--files 5000] [--repeat 3]
                                 [--mini-batch-size 65536] [--files-per-batch 32]

Tabular: examples/make_data.py's Parquet blobs (``id``, ``f0..f15``, ``label``), the
16 -> 64 -> 4 MLP of examples/scripts/make_weights.py, scored (a) by
``examples/scripts/score_tabular.py`` (NumPy on a pandas DataFrame per batch, results
a DataFrame: id, label, probability) and (b) by an ONNX model built here from the SAME
weights with the same outputs (``--columns 'f*' --keep-columns id``), both to
Parquet with the same batches. Files: examples/scripts/make_files.py's ``.npy``
images through ``examples/scripts/classify_files.py``, append_row to a text file,
``--files-per-batch`` files per batch.

``script_n2_blas_env`` is ``script_n2`` launched with ``OMP_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` set to the cores per rank: mpiscore sets them in each
scoring process too, but after NumPy (and so OpenBLAS) is loaded there, where they
no longer take effect; the launch's values do.

Contenders are whole processes (start-up included), interleaved round by round.
For each: median wall seconds, items/s over the wall, and the job's own items/s
from ``summary.json`` (scoring only, start-up excluded); then ratios: script over
ONNX at each rank count, and -n 2 over -n 1. Needs ``onnx`` (pip install '.[test]')
and pandas (``.[scripts]``).
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

import numpy as np
import onnx
from common import HERE, MPIEXEC, cores, example_data
from onnx import TensorProto, helper, numpy_helper

SCRIPTS = HERE.parent / "examples" / "scripts"
RANKS = (1, 2)


def onnx_twin(weights: Path, path: Path) -> Path:
    """The entry script's model as ONNX, from the same weights, with the same outputs:
    ``label`` (int64 argmax) and ``probability`` (float32 max of the softmax)."""
    with np.load(weights) as saved:
        arrays = {name: saved[name] for name in ("w1", "b1", "w2", "b2")}
    features = arrays["w1"].shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w1"], ["h0"]),
         helper.make_node("Add", ["h0", "b1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h2"]),
         helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
         helper.make_node("Add", ["h3", "b2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["softmax"], axis=1),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
         helper.make_node("ReduceMax", ["softmax"], ["probability"], axes=[1], keepdims=0)],
        "blobs_mlp_twin",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def prepare(scratch: Path, rows: int, files: int) -> dict[str, Path]:
    """Data, weights, the ONNX twin and the images, all in ``scratch``."""
    example_data(scratch, rows)
    for script, *args in (("make_weights.py", "--out", scratch / "model"),
                          ("make_files.py", "--files", files, "--out", scratch)):
        subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], check=True,
                       capture_output=True, timeout=600)
    model = onnx_twin(scratch / "model" / "weights.npz", scratch / "twin.onnx")
    return {"parquet": scratch / "blobs.parquet", "weights": scratch / "model",
            "onnx": model, "images": scratch / "images", "templates": scratch / "image_model"}


def score(ranks: int, *options: object) -> list[str]:
    """``mpiexec -n RANKS mpiscore score OPTIONS`` as common.py launches it."""
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
            *map(str, options)]


Contender = tuple[str, Path, list[str], dict[str, str] | None]  # kind, output, command, env


def blas_env(ranks: int) -> dict[str, str]:
    """The launch's environment with BLAS/OpenMP threads at the cores per rank."""
    threads = str(max(1, cores() // ranks))
    return {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def jobs(paths: dict[str, Path], scratch: Path, batch: str, files_per_batch: int
         ) -> dict[str, Contender]:
    """name -> (kind, output, command, environment or None) for every contender."""
    found: dict[str, Contender] = {}
    for n in RANKS:
        out = scratch / f"script-n{n}.parquet"
        found[f"script_n{n}"] = ("tabular", out, score(
            n, "--entry-script", SCRIPTS / "score_tabular.py", "--input", paths["parquet"],
            "--output", out, "--mini-batch-size", batch, "--overwrite",
            "--", "--model_dir", paths["weights"]), None)
        out = scratch / f"onnx-n{n}.parquet"
        found[f"onnx_n{n}"] = ("tabular", out, score(
            n, "--model", paths["onnx"], "--input", paths["parquet"], "--columns", "f*",
            "--keep-columns", "id", "--output", out, "--mini-batch-size", batch,
            "--overwrite"), None)
    kind, plain, command, _ = found["script_n2"]
    out = scratch / "script-n2-env.parquet"
    command = [str(out) if word == str(plain) else word for word in command]
    found["script_n2_blas_env"] = (kind, out, command, blas_env(2))
    for n in RANKS:
        out = scratch / f"files-n{n}.txt"
        found[f"files_n{n}"] = ("files", out, score(
            n, "--entry-script", SCRIPTS / "classify_files.py", "--input",
            f"{paths['images']}/**/*.npy", "--input-mode", "files", "--mini-batch-size",
            files_per_batch, "--output", out, "--output-action", "append_row",
            "--", "--model_dir", paths["templates"]), None)
    return found


def fresh(output: Path) -> None:
    """append_row output is never replaced by --overwrite (a text file carries no proof
    that mpiscore wrote it), and an unchanged job would be "already complete": remove
    the last round's output and run directory first (outside the timing)."""
    output.unlink(missing_ok=True)
    shutil.rmtree(output.with_name(output.name + ".run"), ignore_errors=True)


def run_once(output: Path, command: list[str], env: dict[str, str] | None
             ) -> tuple[float, float]:
    """(wall seconds of the whole process, the job's own items/s from summary.json)."""
    if output.suffix == ".txt":
        fresh(output)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    summary = json.loads((output.with_name(output.name + ".run") / "summary.json").read_text())
    return wall, float(summary["rows_per_second"])


def measure(contenders: dict[str, Contender], repeat: int) -> dict[str, dict[str, list[float]]]:
    """Every contender once per round, round after round, so noise hits all alike."""
    runs: dict[str, dict[str, list[float]]] = {name: {"wall": [], "job": []}
                                               for name in contenders}
    for _ in range(repeat):
        for name, (_, output, command, env) in contenders.items():
            wall, rate = run_once(output, command, env)
            runs[name]["wall"].append(wall)
            runs[name]["job"].append(rate)
    return runs


def outputs_agree(scratch: Path) -> dict[str, object]:
    """Whether the script and its ONNX twin gave the same labels (and probabilities to
    float32 rounding), and the file job's lines are one per file at both rank counts."""
    import pyarrow.parquet as pq

    script, twin = (pq.read_table(scratch / f"{kind}-n1.parquet") for kind in ("script", "onnx"))
    lines = [(scratch / f"files-n{n}.txt").read_text() for n in RANKS]
    return {"labels_match": script["label"].equals(twin["label"]) and
            script["id"].equals(twin["id"]),
            "probability_max_abs_diff": float(np.abs(
                script["probability"].to_numpy() - twin["probability"].to_numpy()).max()),
            "file_lines_match": lines[0] == lines[1],
            "file_lines": lines[0].count("\n")}


def summarise(contenders: dict[str, Contender],
              runs: dict[str, dict[str, list[float]]], items: dict[str, int]) -> dict:
    results = {}
    for name, (kind, _, _, _) in contenders.items():
        wall = statistics.median(runs[name]["wall"])
        results[name] = {"kind": kind, "unit": "rows" if kind == "tabular" else "files",
                         "items": items[kind], "median_seconds": wall,
                         "items_per_second": items[kind] / wall,
                         "job_items_per_second": statistics.median(runs[name]["job"]),
                         "runs": runs[name]["wall"]}

    def ratio(a: str, b: str, key: str) -> float:
        return results[a][key] / results[b][key]

    ratios = {}
    for key, label in (("items_per_second", "wall"), ("job_items_per_second", "job")):
        for n in RANKS:
            ratios[f"script_over_onnx_n{n}_{label}"] = ratio(f"script_n{n}", f"onnx_n{n}", key)
        for prefix in ("script", "onnx", "files"):
            ratios[f"{prefix}_n2_over_n1_{label}"] = ratio(f"{prefix}_n2", f"{prefix}_n1", key)
        ratios[f"script_blas_env_over_onnx_n2_{label}"] = ratio("script_n2_blas_env", "onnx_n2",
                                                                 key)
    return {"results": results, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mini-batch-size", default="65536", help="tabular: rows or bytes")
    parser.add_argument("--files-per-batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        paths = prepare(scratch, args.rows, args.files)
        contenders = jobs(paths, scratch, args.mini_batch_size, args.files_per_batch)
        runs = measure(contenders, args.repeat)
        agree = outputs_agree(scratch)
    data = {"benchmark": "scripts", "rows": args.rows, "files": args.files,
            "repeat": args.repeat, "cores": cores(), "mini_batch_size": args.mini_batch_size,
            "files_per_batch": args.files_per_batch, **agree,
            **summarise(contenders, runs, {"tabular": args.rows, "files": args.files})}
    print(json.dumps(data, indent=2))
    print(f"\n{'contender':<20}{'unit':>7}{'median s':>10}{'items/s wall':>15}"
          f"{'items/s job':>15}")
    for name, r in data["results"].items():
        print(f"{name:<20}{r['unit']:>7}{r['median_seconds']:>10.2f}"
              f"{r['items_per_second']:>15,.0f}{r['job_items_per_second']:>15,.0f}")
    for name, value in data["ratios"].items():
        print(f"{name:<40}{value:>8.2f}")


if __name__ == "__main__":
    main()
