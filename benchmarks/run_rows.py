"""Why a batch runs in slices (issue 15 target 2): one 16,384-row batch of the light and
heavy MLPs scored by single-threaded sessions, whole and in slices of each of
scoring/scorers/run_rows.py's sizes, by one process alone and by one process per core
side by side (as ``-n <cores>`` or ``--procs-per-rank <cores>`` run them), and the
size mpiscore's own scorer keeps after measuring.

    python benchmarks/run_rows.py [--batch-rows 16384] [--repeat 20] [--models light heavy]

For each model and process count: milliseconds per batch at each slice size (the
median over the processes of each one's mean over ``--repeat`` batches) and the speed of
the fastest size relative to the whole batch. A run makes every intermediate tensor as
many rows long as the run: at 16,384 rows a 1,024-wide layer is 64 MB, streamed through
memory at every layer, where a slice of a few hundred rows stays in the core's L2.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = {"light": (64, 256, 256, 16), "heavy": (64, 1024, 1024, 16)}
WHOLE = 0


def sizes() -> tuple[int, ...]:
    from mpiscore.scoring.scorers.run_rows import CANDIDATES

    return (WHOLE, *CANDIDATES)


def session(model: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def time_sizes(task: tuple[str, int, int]) -> dict[int, float]:
    """In a worker process: mean seconds per batch at each slice size, sizes interleaved
    batch by batch so that a slow moment of the machine hits them all alike."""
    model, batch_rows, repeat = task
    scorer = session(model)
    batch = np.random.default_rng(0).normal(size=(batch_rows, 64)).astype(np.float32)
    spent = dict.fromkeys(sizes(), 0.0)
    scorer.run(None, {"features": batch})  # allocations, cold caches
    for _ in range(repeat):
        for size in spent:
            step = size or batch_rows
            started = time.perf_counter()
            for start in range(0, batch_rows, step):
                scorer.run(None, {"features": batch[start:start + step]})
            spent[size] += time.perf_counter() - started
    return {size: seconds / repeat for size, seconds in spent.items()}


def chosen_by_mpiscore(model: str, batch_rows: int) -> int:
    """The size an "onnx" scorer keeps, measuring as in a job (scorers/run_rows.py)."""
    from mpiscore.config import ScorerSettings, SessionConfig
    from mpiscore.scoring.scorers.onnx import OnnxScorer

    scorer = OnnxScorer.open(Path(model).read_bytes(), model,
                             ScorerSettings(SessionConfig(), intra_op_threads=1))
    batch = np.random.default_rng(0).normal(size=(batch_rows, 64)).astype(np.float32)
    while scorer.slicing.measuring:
        scorer.score({"features": batch})
    return scorer.run_rows


def bench(kind: str, batch_rows: int, repeat: int, scratch: Path, cores: int) -> dict:
    model = str(mlp(scratch / f"{kind}.onnx", WIDTHS[kind]))
    layouts = {}
    for processes in sorted({1, cores}):
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            per_process = pool.map(time_sizes, [(model, batch_rows, repeat)] * processes)
        ms = {size: round(1000 * statistics.median(p[size] for p in per_process), 2)
              for size in sizes()}
        fastest = min(ms, key=ms.__getitem__)
        layouts[f"{processes}_process{'es' * (processes > 1)}"] = {
            "ms_per_batch": {("whole" if size == WHOLE else str(size)): value
                             for size, value in ms.items()},
            "fastest": "whole" if fastest == WHOLE else fastest,
            "fastest_speed_vs_whole": round(ms[WHOLE] / ms[fastest], 3)}
    return {"model": "x".join(map(str, WIDTHS[kind])), "batch_rows": batch_rows,
            "layouts": layouts, "mpiscore_keeps": chosen_by_mpiscore(model, batch_rows)}


def table(models: dict[str, dict]) -> None:
    print(f"\n{'model':<7}{'processes':<13}" + "".join(
        f"{'whole' if s == WHOLE else s:>9}" for s in sizes()) + "  fastest vs whole, kept")
    for kind, report in models.items():
        for layout, result in report["layouts"].items():
            cells = "".join(f"{v:>9.1f}" for v in result["ms_per_batch"].values())
            print(f"{kind:<7}{layout:<13}{cells}  {result['fastest_speed_vs_whole']:.2f}x at "
                  f"{result['fastest']}, mpiscore keeps {report['mpiscore_keeps'] or 'whole'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-rows", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", nargs="+", choices=list(WIDTHS), default=list(WIDTHS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpiscore-run-rows-") as tmp:
        models = {kind: bench(kind, args.batch_rows, args.repeat, Path(tmp), cores())
                  for kind in args.models}
    print(json.dumps({"benchmark": "run_rows", "cores": cores(), "repeat": args.repeat,
                      "models": models}, indent=1))
    table(models)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cores
    from overhead import mlp

    main()
