"""mpiscore vs the usual ways to parallelise the same job in Python: multiprocessing.Pool
and mpi4py.futures, Dask distributed and Ray Data (when installed; they are not mpiscore
dependencies: ``pip install "dask[distributed]" "ray[data]"``), each checked
to produce the same output.

    python benchmarks/peers.py [--rows 2000000] [--repeat 3]

The job: the light MLP of overhead.py (64 -> 256 -> 256 -> 16) over float32
HDF5 ``/features`` in 16,384-row batches, output to HDF5, on all cores. The
peers are written as a user would: workers with one single-threaded session
each read their rows, score them and return the scores; the parent writes
them in order.
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


def run_dask(model: str, data: str, out: str, workers: int) -> None:
    from distributed import Client, LocalCluster

    rows, work = tasks(model, data)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        futures = client.map(score_rows, work)
        write_in_order(out, rows, (future.result() for future in futures))


class _RayScorer:
    """A Ray Data actor: scores the row ranges of its batch of tasks."""

    def __call__(self, batch: dict) -> dict:
        scores = [score_rows((str(m), str(d), int(s), int(e))) for m, d, s, e in
                  zip(batch["model"], batch["data"], batch["start"], batch["stop"], strict=True)]
        return {"scores": np.concatenate(scores)}


def run_ray(model: str, data: str, out: str, workers: int) -> None:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows, work = tasks(model, data)
    items = [{"model": m, "data": d, "start": s, "stop": e} for m, d, s, e in work]
    scored = ray.data.from_items(items).map_batches(_RayScorer, batch_size=1,
                                                    concurrency=workers)
    write_in_order(out, rows, (b["scores"] for b in
                               scored.iter_batches(batch_size=None, batch_format="numpy")))
    ray.shutdown()


RUNNERS = {"pool": run_pool, "dask": run_dask, "ray": run_ray}


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, model, data, out = args.run
        if kind == "futures":
            run_futures(model, data, out)
        else:
            RUNNERS[kind](model, data, out, cores())
        return
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        model = mlp(scratch / "light.onnx", MODELS["light"])
        data = dataset(scratch / "light.h5", args.rows, MODELS["light"][0])
        n = cores()
        outs = {"mpiscore": scratch / "mpiscore.h5"}
        jobs = {"mpiscore": mpiscore_command(n, model, data, outs["mpiscore"], BATCH_ROWS)}
        peers = {"multiprocessing_pool": "pool", "dask_distributed": "dask", "ray_data": "ray"}
        for name, kind in peers.items():
            if kind == "pool" or installed("distributed" if kind == "dask" else "ray"):
                outs[name] = scratch / f"{name}.h5"
                jobs[name] = [sys.executable, __file__, "--run", kind, str(model), str(data),
                              str(outs[name])]
        outs["mpi4py_futures"] = scratch / "futures.h5"
        jobs["mpi4py_futures"] = [MPIEXEC, "-n", str(n + 1), sys.executable, "-m",
                                  "mpi4py.futures", __file__, "--run", "futures", str(model),
                                  str(data), str(outs["mpi4py_futures"])]
        seconds = interleaved(jobs, args.repeat)
        with h5py.File(outs["mpiscore"], "r") as handle:
            reference = handle["scores"][()]
        for name in set(outs) - {"mpiscore"}:
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
