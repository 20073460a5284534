"""mpiscore vs the usual ways to parallelise the same job in Python: multiprocessing.Pool
and mpi4py.futures, each checked to produce the same output.

    python benchmarks/peers.py [--rows 2000000] [--repeat 3]

The job: the light MLP of overhead.py (64 -> 256 -> 256 -> 16) over float32
HDF5 ``/features`` in 16,384-row batches, output to HDF5, on all cores. The
peers are written as a user would: workers with one single-threaded session
each read their rows, score them and return the scores; the parent writes
them in order. Dask and Ray Data are not installed here (not mpiscore
dependencies), so they are not in this run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

BATCH_ROWS = 16384
_STATE: dict = {}


def _session(model: str):
    """One single-threaded session per worker process, created on first use."""
    if "session" not in _STATE:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        _STATE["session"] = ort.InferenceSession(model, options,
                                                 providers=["CPUExecutionProvider"])
    return _STATE["session"]


def score_rows(task: tuple[str, str, int, int]) -> np.ndarray:
    """Worker: read rows start:stop, score them, return the scores."""
    model, data, start, stop = task
    with h5py.File(data, "r") as handle:
        features = handle["features"][start:stop]
    return _session(model).run(["scores"], {"features": features})[0]


def write_in_order(out: str, rows: int, results) -> None:
    with h5py.File(out, "w") as handle:
        scores = None
        start = 0
        for result in results:
            if scores is None:
                scores = handle.create_dataset("scores", (rows, *result.shape[1:]), result.dtype)
            scores[start:start + len(result)] = result
            start += len(result)


def tasks(model: str, data: str) -> tuple[int, list[tuple[str, str, int, int]]]:
    with h5py.File(data, "r") as handle:
        rows = len(handle["features"])
    return rows, [(model, data, s, min(s + BATCH_ROWS, rows)) for s in range(0, rows, BATCH_ROWS)]


def run_pool(model: str, data: str, out: str, workers: int) -> None:
    import multiprocessing

    rows, work = tasks(model, data)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        write_in_order(out, rows, pool.imap(score_rows, work))


def run_futures(model: str, data: str, out: str) -> None:
    from mpi4py.futures import MPIPoolExecutor

    rows, work = tasks(model, data)
    with MPIPoolExecutor() as executor:
        write_in_order(out, rows, executor.map(score_rows, work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, model, data, out = args.run
        run_pool(model, data, out, cores()) if kind == "pool" else run_futures(model, data, out)
        return
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        model = mlp(scratch / "light.onnx", MODELS["light"])
        data = dataset(scratch / "light.h5", args.rows, MODELS["light"][0])
        outs = {name: scratch / f"{name}.h5" for name in
                ("mpiscore", "multiprocessing_pool", "mpi4py_futures")}
        n = cores()
        jobs = {
            "mpiscore": mpiscore_command(n, model, data, outs["mpiscore"], BATCH_ROWS),
            "multiprocessing_pool": [sys.executable, __file__, "--run", "pool", str(model),
                                     str(data), str(outs["multiprocessing_pool"])],
            "mpi4py_futures": [MPIEXEC, "-n", str(n + 1), sys.executable, "-m",
                               "mpi4py.futures", __file__, "--run", "futures", str(model),
                               str(data), str(outs["mpi4py_futures"])],
        }
        seconds = interleaved(jobs, args.repeat)
        with h5py.File(outs["mpiscore"], "r") as handle:
            reference = handle["scores"][()]
        for name in ("multiprocessing_pool", "mpi4py_futures"):
            with h5py.File(outs[name], "r") as handle:
                np.testing.assert_allclose(handle["scores"][()], reference, rtol=1e-6,
                                           atol=1e-6, err_msg=name)
    report("peers", args.rows, seconds, "mpiscore", model="64x256x256x16",
           batch_rows=BATCH_ROWS, outputs_match=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import MPIEXEC, cores, interleaved, mpiscore_command, report
    from overhead import MODELS, dataset, mlp

    main()
