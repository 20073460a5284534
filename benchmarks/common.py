"""Shared by the benchmark scripts: timing whole processes, interleaving, reporting."""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# as tests/mpi/launch.py finds and runs it (the benchmarks run without the tests)
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def byte_compiled(tree: Path) -> Path:
    """``tree`` (a checkout) with its mpiscore byte-compiled, as pip compiles a package it
    installs. Run from a checkout (the editable install, PYTHONPATH) where
    ``PYTHONDONTWRITEBYTECODE`` is set, as on these machines, every process compiled
    all of mpiscore again: ~50 ms of CPU a process (a rank's imports took 0.13 s of
    CPU instead of 0.08 s), which no installed copy pays. Quick when nothing changed."""
    compileall.compile_dir(tree / "mpiscore", quiet=1)
    return tree


def environment(tree: Path | None) -> dict[str, str]:
    """The environment that runs ``tree``'s mpiscore (through PYTHONPATH), byte-compiled;
    None: the installed one."""
    if tree is None:
        return dict(os.environ)
    paths = [str(byte_compiled(tree)), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


byte_compiled(HERE.parent)  # this checkout: what the venv's editable install runs


def example_data(scratch: Path, rows: int) -> Path:
    """The README example's data (examples/make_data.py), ``rows`` rows, in ``scratch``."""
    subprocess.run([sys.executable, str(HERE.parent / "examples" / "make_data.py"), "--rows",
                    str(rows), "--out", str(scratch)], check=True, capture_output=True,
                   timeout=600)
    return scratch / "blobs.h5"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def plain_loop_command(model: Path, data: Path, out: Path, batch_rows: int,
                       threads: int | None = None,
                       providers: str = "CPUExecutionProvider") -> list[str]:
    """The hand-written single-process loop (plain_loop.py), using every core (or
    ``threads``) on ``providers``."""
    return [sys.executable, str(HERE / "plain_loop.py"), str(model), str(data), str(out),
            str(threads or cores()), str(batch_rows), providers]


def mpiscore_command(ranks: int, model: Path, data: Path, out: Path, batch_rows: int,
                     *extra: str) -> list[str]:
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpiscore", "score",
            "--model", str(model), "--input", f"{data}:/features", "--output", str(out),
            "--overwrite", "--mini-batch-size", str(batch_rows), *extra]


def timed(command: list[str]) -> float:
    """Wall seconds of a whole process (start-up and imports included)."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - started


def interleaved(jobs: dict[str, list[str]], repeat: int) -> dict[str, list[float]]:
    """Run every job once per round, round after round, so noise hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeat):
        for name, command in jobs.items():
            seconds[name].append(timed(command))
    return seconds


def report(benchmark: str, rows: int, seconds: dict[str, list[float]], baseline: str,
           **info: object) -> dict:
    """Print JSON (medians, rows/s, speed relative to ``baseline``), then a table."""
    base = statistics.median(seconds[baseline])
    results = {name: {"median_seconds": statistics.median(runs),
                      "rows_per_second": rows / statistics.median(runs),
                      f"speed_vs_{baseline}": base / statistics.median(runs), "runs": runs}
               for name, runs in seconds.items()}
    data = {"benchmark": benchmark, "rows": rows, "cores": cores(), **info, "results": results}
    print(json.dumps(data, indent=2))
    print(f"\n{'contender':<34}{'median s':>10}{'rows/s':>14}{'vs ' + baseline:>26}")
    for name, r in results.items():
        print(f"{name:<34}{r['median_seconds']:>10.2f}{r['rows_per_second']:>14,.0f}"
              f"{r[f'speed_vs_{baseline}']:>25.2f}x")
    return data
