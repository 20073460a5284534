"""mpiscore vs the usual ways to score on one node: the single-process loop,
multiprocessing.Pool and mpi4py.futures, Dask distributed and Ray Data (when installed;
they are not mpiscore dependencies: ``pip install "dask[distributed]" "ray[data]"``),
on an I/O-bound and a compute-bound model, each checked to produce the same output.

    python benchmarks/peers.py [--rows 2000000] [--heavy-rows 500000] [--repeat 3]
                               [--models light heavy] [--no-futures]

The jobs (issue 15 target 2): the light MLP (64 -> 256 -> 256 -> 16, I/O-bound) over
``--rows`` rows and the heavy one (64 -> 1024 -> 1024 -> 16, compute-bound) over
``--heavy-rows``, float32 HDF5 ``/features`` in 16,384-row batches, output to HDF5,
on all cores. Contenders, whole processes (interpreter, imports, MPI start-up
included), every one of both models in each round, rounds interleaved, medians:
plain_loop.py (one session using every core), mpiscore ``-n <cores>`` and ``-n 1
--procs-per-rank <cores>``, and the peers written as a user would: workers with one
single-threaded session each read their rows, score them and return the scores; the
parent writes them in order. The table gives each contender's speed relative to the
loop and to ``multiprocessing.Pool`` (above 1: faster), and, for mpiscore, where its
wall went (summary.json: outside ``api.run``, start-up, the loop, finishing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

BATCH_ROWS = 16384
WIDTHS = {"light": (64, 256, 256, 16), "heavy": (64, 1024, 1024, 16)}
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
LOOP, POOL = "plain_onnxruntime_loop", "multiprocessing_pool"


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def contenders(kind: str, scratch: Path, rows: int, futures: bool
               ) -> dict[str, tuple[list[str], Path]]:
    """Every contender's command and output for one model."""
    model = mlp(scratch / f"{kind}.onnx", WIDTHS[kind])
    data = dataset(scratch / f"{kind}.h5", rows, WIDTHS[kind][0])
    n = cores()

    def out(name: str) -> Path:
        return scratch / f"{kind}.{name}.h5"

    jobs = {
        LOOP: (plain_loop_command(model, data, out(LOOP), BATCH_ROWS), out(LOOP)),
        f"mpiscore_n{n}": (mpiscore_command(n, model, data, out("a"), BATCH_ROWS), out("a")),
        f"mpiscore_n1_procs{n}": (mpiscore_command(1, model, data, out("b"), BATCH_ROWS,
                                                   "--procs-per-rank", str(n)), out("b")),
    }
    peers = {POOL: "pool", "dask_distributed": "dask", "ray_data": "ray"}
    for name, runner in peers.items():
        if runner == "pool" or installed("distributed" if runner == "dask" else "ray"):
            jobs[name] = ([sys.executable, __file__, "--run", runner, str(model), str(data),
                           str(out(name))], out(name))
    if futures:
        jobs["mpi4py_futures"] = ([MPIEXEC, "-n", str(n + 1), sys.executable, "-m",
                                   "mpi4py.futures", __file__, "--run", "futures", str(model),
                                   str(data), str(out("futures"))], out("futures"))
    return jobs


def where_the_wall_went(out: Path, wall: float) -> dict:
    """mpiscore's summary.json, slowest rank: seconds outside ``api.run`` (interpreter,
    imports, MPI start-up, exit), its start-up (to the loop), the loop, the rest of
    ``api.run`` (finishing the output, the summary), and the stages' sums."""
    summary = json.loads((out.with_name(out.name + ".run") / "summary.json").read_text())
    ranks = summary["per_rank"]
    inside = summary["wall_seconds"]
    startup = max(r["startup_seconds"] for r in ranks)
    loop = max(r["loop_seconds"] for r in ranks)
    firsts = [r["first_batch_seconds"] for r in ranks if r["first_batch_seconds"] is not None]
    return {"outside_api_run": round(wall - inside, 3), "startup": round(startup, 3),
            "first_batch": round(max(firsts), 3) if firsts else None, "loop": round(loop, 3),
            "finish": round(inside - startup - loop, 3),
            **{key: round(sum(r[key] for r in ranks), 3)
               for key in ("read_seconds", "score_seconds", "write_seconds",
                           "driver_cpu_seconds", "scorer_cpu_seconds")}}


def run_rounds(jobs: dict[str, tuple[list[str], Path]], repeat: int
               ) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Every job once per round, round after round, so noise hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    stages: dict[str, list[dict]] = {name: [] for name in jobs if "mpiscore" in name}
    for _ in range(repeat):
        for name, (command, out) in jobs.items():
            seconds[name].append(round(timed(command), 3))
            if name in stages:
                stages[name].append(where_the_wall_went(out, seconds[name][-1]))
    return seconds, stages


def check_outputs(jobs: dict[str, tuple[list[str], Path]]) -> None:
    with h5py.File(jobs[LOOP][1], "r") as handle:
        reference = handle["scores"][()]
    for name, (_, out) in jobs.items():
        with h5py.File(out, "r") as handle:
            np.testing.assert_allclose(handle["scores"][()], reference, rtol=1e-5, atol=1e-5,
                                       err_msg=name)


def summarise(kind: str, rows: int, seconds: dict[str, list[float]],
              stages: dict[str, list[dict]]) -> dict:
    loop, pool = statistics.median(seconds[LOOP]), statistics.median(seconds[POOL])
    results = {}
    for name, runs in seconds.items():
        median = statistics.median(runs)
        results[name] = {"median_seconds": round(median, 3),
                         "rows_per_second": round(rows / median),
                         "speed_vs_loop": round(loop / median, 3),
                         "speed_vs_pool": round(pool / median, 3), "runs": runs}
        if name in stages:  # the round whose wall is the median's
            middle = sorted(range(len(runs)), key=runs.__getitem__)[len(runs) // 2]
            results[name]["stages_of_median_run"] = stages[name][middle]
    return {"model": "x".join(map(str, WIDTHS[kind])), "rows": rows, "results": results}


def table(models: dict[str, dict]) -> None:
    print(f"\n{'model':<7}{'contender':<24}{'median s':>10}{'vs loop':>9}{'vs Pool':>9}"
          f"  mpiscore s: outside api.run / start-up / loop / finish")
    for kind, data in models.items():
        for name, r in data["results"].items():
            stage = r.get("stages_of_median_run")
            where = "" if stage is None else (
                f"  {stage['outside_api_run']} / {stage['startup']} / {stage['loop']} / "
                f"{stage['finish']}")
            print(f"{kind:<7}{name:<24}{r['median_seconds']:>10.2f}{r['speed_vs_loop']:>8.2f}x"
                  f"{r['speed_vs_pool']:>8.2f}x{where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="light model's rows")
    parser.add_argument("--heavy-rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(WIDTHS), default=list(WIDTHS))
    parser.add_argument("--no-futures", action="store_true",
                        help="leave out mpi4py.futures (slow, and far behind)")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        kind, model, data, out = args.run
        if kind == "futures":
            run_futures(model, data, out)
        else:
            RUNNERS[kind](model, data, out, cores())
        return
    rows = {"light": args.rows, "heavy": args.heavy_rows}
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        per_model = {kind: contenders(kind, Path(tmp), rows[kind], not args.no_futures)
                     for kind in args.models}
        jobs = {f"{kind}/{name}": job for kind, named in per_model.items()
                for name, job in named.items()}
        seconds, stages = run_rounds(jobs, args.repeat)
        for named in per_model.values():
            check_outputs(named)
    models = {kind: summarise(kind, rows[kind],
                              {n: seconds[f"{kind}/{n}"] for n in per_model[kind]},
                              {n: stages[f"{kind}/{n}"] for n in per_model[kind]
                               if f"{kind}/{n}" in stages})
              for kind in args.models}
    print(json.dumps({"benchmark": "peers", "cores": cores(), "batch_rows": BATCH_ROWS,
                      "repeat": args.repeat, "load_average": [round(x, 2) for x in os.getloadavg()],
                      "outputs_match": True, "models": models}, indent=1))
    table(models)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import MPIEXEC, cores, mpiscore_command, plain_loop_command, timed
    from overhead import dataset, mlp

    main()
