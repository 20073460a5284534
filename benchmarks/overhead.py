"""mpiscore vs the hand-written single-process loop, for an I/O-bound and a compute-bound model.

    python benchmarks/overhead.py [--light-rows 2000000] [--heavy-rows 100000] [--repeat 3]

light: MLP 64 -> 256 -> 256 -> 16 (I/O-bound); heavy: MLP 64 -> 2048 -> 2048 -> 16
(compute-bound). Both read float32 HDF5 ``/features`` and write HDF5, in
16,384-row batches. Contenders, whole processes, interleaved: the plain loop
(plain_loop.py, all cores in one session), mpiscore -n 1 with one scoring
process using all cores, -n 1 with one process per core, and -n 2 (one rank
per core). Needs ``onnx`` (pip install '.[test]') to build the models.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import h5py
import numpy as np
import onnx
from common import cores, interleaved, mpiscore_command, plain_loop_command, report
from onnx import TensorProto, helper, numpy_helper

BATCH_ROWS = 16384
MODELS = {"light": (64, 256, 256, 16), "heavy": (64, 2048, 2048, 16)}


def mlp(path: Path, widths: tuple[int, ...]) -> Path:
    """A ReLU MLP with random weights (the values do not matter, only the work)."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "features"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        w = rng.normal(scale=n_in ** -0.5, size=(n_in, n_out)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        out = "scores" if i == len(widths) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu" if out != "scores" else "Identity",
                                      [f"m{i}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", widths[-1]])],
        weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    return path


def dataset(path: Path, rows: int, width: int) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as handle:
        features = handle.create_dataset("features", (rows, width), np.float32,
                                         chunks=(min(BATCH_ROWS, rows), width))
        for start in range(0, rows, 1 << 20):
            stop = min(rows, start + (1 << 20))
            features[start:stop] = rng.normal(size=(stop - start, width)).astype(np.float32)
    return path


def bench(kind: str, rows: int, repeat: int, scratch: Path) -> dict:
    model = mlp(scratch / f"{kind}.onnx", MODELS[kind])
    data = dataset(scratch / f"{kind}.h5", rows, MODELS[kind][0])
    out = scratch / "out"
    n = cores()
    jobs = {
        "plain_onnxruntime_loop": plain_loop_command(model, data, out.with_suffix(".p.h5"),
                                                     BATCH_ROWS),
        f"mpiscore_n1_1proc_{n}threads": mpiscore_command(
            1, model, data, out.with_suffix(".a.h5"), BATCH_ROWS, "--procs-per-rank", "1"),
        f"mpiscore_n1_{n}procs_1thread": mpiscore_command(
            1, model, data, out.with_suffix(".b.h5"), BATCH_ROWS, "--procs-per-rank", "auto"),
        f"mpiscore_n{n}_1proc_1thread": mpiscore_command(
            n, model, data, out.with_suffix(".c.h5"), BATCH_ROWS),
    }
    return report(f"overhead_{kind}", rows, interleaved(jobs, repeat), "plain_onnxruntime_loop",
                  model="x".join(map(str, MODELS[kind])), batch_rows=BATCH_ROWS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-rows", type=int, default=2_000_000)
    parser.add_argument("--heavy-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        bench("light", args.light_rows, args.repeat, Path(tmp))
        bench("heavy", args.heavy_rows, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
