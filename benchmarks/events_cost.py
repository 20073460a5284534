"""What recording events costs a job: the same job with and without the events file
(RUN_DIR/events, rank/recorder.py), interleaved, small batches so recording is as
frequent as it gets. Both run through the same wrapper; "without" replaces the
pool's recorder by nothing. Prints JSON (the job's own wall from summary.json and
the whole process's), then a table.

    python benchmarks/events_cost.py [--rows 200000] [--batch-rows 256] [--ranks 2]
                                     [--procs-per-rank 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, MPIEXEC, example_data, report, timed

WRAPPER = ("import sys, runpy, mpiscore.rank.pool as pool\n"
           "if sys.argv.pop(1) == 'off': pool.ScorerPool._open_recorder = lambda self, spec: None\n"
           "runpy.run_module('mpiscore', run_name='__main__')")


def command(events: str, ranks: int, model: Path, data: Path, out: Path, batch_rows: int,
            procs: int, monitor: float) -> list[str]:
    assert MPIEXEC, "mpiexec not found: install with pip install '.[mpich]'"
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-c", WRAPPER, events, "score",
            "--model", str(model), "--input", f"{data}:/features", "--output", str(out),
            "--overwrite", "--mini-batch-size", str(batch_rows), "--procs-per-rank",
            str(procs), "--intra-op-threads", "1", "--monitor-seconds", str(monitor),
            "--progress-seconds", "600"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--procs-per-rank", type=int, default=1)
    parser.add_argument("--monitor-seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = HERE.parent / "examples" / "mlp_classifier.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        data = example_data(Path(scratch), args.rows)
        outs = {name: Path(scratch) / f"{name}.h5" for name in ("with events", "without")}
        jobs = {name: command("on" if name == "with events" else "off", args.ranks, model,
                              data, out, args.batch_rows, args.procs_per_rank,
                              args.monitor_seconds) for name, out in outs.items()}
        process: dict[str, list[float]] = {name: [] for name in jobs}
        job: dict[str, list[float]] = {name: [] for name in jobs}
        lines: list[int] = []
        for _ in range(args.repeat):
            for name, argv in jobs.items():
                process[name].append(timed(argv))
                run_dir = outs[name].with_name(outs[name].name + ".run")
                job[name].append(json.loads((run_dir / "summary.json").read_text())
                                 ["wall_seconds"])
                if name == "with events":
                    lines.append(sum(len(p.read_text().splitlines())
                                     for p in (run_dir / "events").glob("*.jsonl")))
                time.sleep(0.2)
        batches = -(-args.rows // args.batch_rows)
        with_job, without_job = (statistics.median(job[n]) for n in jobs)
        report("events_cost", args.rows, process, "without", ranks=args.ranks,
               procs_per_rank=args.procs_per_rank, batch_rows=args.batch_rows,
               batches=batches, monitor_seconds=args.monitor_seconds,
               events_lines=statistics.median(lines),
               job_wall_seconds={n: {"median": statistics.median(v), "runs": v}
                                 for n, v in job.items()},
               job_wall_overhead_percent=round(100 * (with_job / without_job - 1), 2),
               per_batch_overhead_us=round(1e6 * (with_job - without_job) / batches, 1))


if __name__ == "__main__":
    main()
