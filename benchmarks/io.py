"""Write and read throughput of mpiscore's parallel HDF5/Parquet I/O vs plain sequential I/O.

    python benchmarks/io.py [--rows 4000000] [--ranks 2] [--batch-rows 65536]

The same float32 rows x 16 array, in batches. Sequential: one process writes it
with h5py (or pyarrow, row group per batch) and reads it back. mpiscore:
``mpiexec -n RANKS`` ranks share the batches round-robin and use mpiscore's
own writers (HDF5: pre-allocated file, ``pwrite``; Parquet: one part file per
batch, written once), flushed to storage every ``SYNC_GROUP`` batches as scoring
processes do, and readers. MB/s of the data, JSON then a table; the sequential
runs do not fsync, mpiscore's do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH = 16


def data(rows: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, WIDTH)).astype(np.float32)


def sequential(rows: int, batch_rows: int, scratch: Path) -> dict[str, float]:
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, seconds = data(rows), {}
    started = time.perf_counter()
    with h5py.File(scratch / "seq.h5", "w") as handle:
        out = handle.create_dataset("x", x.shape, x.dtype)
        for start in range(0, rows, batch_rows):
            out[start:start + batch_rows] = x[start:start + batch_rows]
    seconds["hdf5_write"] = time.perf_counter() - started
    started = time.perf_counter()
    with h5py.File(scratch / "seq.h5", "r") as handle:
        for start in range(0, rows, batch_rows):
            handle["x"][start:start + batch_rows]
    seconds["hdf5_read"] = time.perf_counter() - started
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH)})
    started = time.perf_counter()
    pq.write_table(table, scratch / "seq.parquet", row_group_size=batch_rows)
    seconds["parquet_write"] = time.perf_counter() - started
    started = time.perf_counter()
    pq.read_table(scratch / "seq.parquet")
    seconds["parquet_read"] = time.perf_counter() - started
    return seconds


def as_rank(rows: int, batch_rows: int, scratch: Path) -> None:
    """One rank of the parallel run: mpiscore's writers and readers on its share."""
    from mpiscore.io import hdf5, parquet
    from mpiscore.io.fields import Field, ParquetSelection
    from mpiscore.plan import SourceFile, make_plan
    from mpiscore.rank.world import MpiWorld
    from mpiscore.tuning import SYNC_GROUP

    world = MpiWorld.comm_world()
    rank, size = world.rank, world.size
    x = data(rows)
    fields = [Field("x", "<f4", (WIDTH,))]
    plan = make_plan([SourceFile("x", rows)], batch_rows)
    mine = plan.batches[rank::size]
    seconds: dict[str, float] = {}

    def timed(name: str, work) -> None:
        world.barrier()
        started = time.perf_counter()
        work()
        world.barrier()
        seconds[name] = time.perf_counter() - started

    h5, partial = scratch / "par.h5", scratch / "par.h5.partial"
    offsets = world.broadcast(hdf5.create(partial, fields, rows, {}, np.zeros((1, 4)))
                        if rank == 0 else None)

    def write_synced(writer) -> None:
        for count, b in enumerate(mine, 1):
            writer.write(b, {"x": x[b.global_start:b.global_stop]})
            if count % SYNC_GROUP == 0:
                writer.sync()
        writer.sync()
        writer.close()
        writer.finish(world, complete=True)

    def write_hdf5() -> None:
        write_synced(hdf5.Hdf5Writer(partial, h5, fields, offsets))

    def read_hdf5() -> None:
        reader = hdf5.Hdf5Reader((hdf5.Hdf5Source(str(h5), (("x", "/x"),)),))
        for b in mine:
            reader.read(b)
        reader.close()

    pq_final, pq_partial = scratch / "par.parquet", scratch / "par.parquet.partial"
    if rank == 0:
        parquet.create(pq_partial)

    def write_parquet() -> None:
        write_synced(parquet.ParquetWriter(pq_partial, pq_final, fields, [], len(plan.batches),
                                           {}))

    def read_parquet() -> None:
        parts = sorted(str(p) for p in pq_final.glob("part-*.parquet"))
        reader = parquet.ParquetReader(tuple(parts), ParquetSelection((("x", ("x",)),)))
        starts = np.cumsum([0] + [parquet.pq.ParquetFile(p).metadata.num_rows for p in parts])
        for b in mine:
            index = int(np.searchsorted(starts, b.global_start, side="right")) - 1
            local = b.global_start - int(starts[index])
            reader.read(type(b)(b.batch_id, index, local, local + b.rows, b.global_start))

    for name, work in (("hdf5_write", write_hdf5), ("hdf5_read", read_hdf5),
                       ("parquet_write", write_parquet), ("parquet_read", read_parquet)):
        timed(name, work)
    if rank == 0:
        print(json.dumps(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch-rows", type=int, default=65536)
    parser.add_argument("--as-rank", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_rank:
        try:
            as_rank(args.rows, args.batch_rows, args.as_rank)
        except BaseException:  # one rank's error must not leave the others in a barrier
            import traceback

            from mpi4py import MPI

            traceback.print_exc()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
        return
    with tempfile.TemporaryDirectory(prefix="mpiscore-bench-") as tmp:
        scratch = Path(tmp)
        plain = sequential(args.rows, args.batch_rows, scratch)
        result = subprocess.run([MPIEXEC, "-n", str(args.ranks), sys.executable, __file__,
                                 "--rows", str(args.rows), "--batch-rows", str(args.batch_rows),
                                 "--as-rank", str(scratch)], capture_output=True, text=True,
                                timeout=1800, check=True)
        parallel = json.loads(result.stdout.strip().splitlines()[-1])
    megabytes = args.rows * WIDTH * 4 / 1e6
    results = {name: {"sequential_mb_per_s": megabytes / plain[name],
                      "mpiscore_mb_per_s": megabytes / parallel[name],
                      "speed_vs_sequential": plain[name] / parallel[name]} for name in plain}
    print(json.dumps({"benchmark": "io", "rows": args.rows, "megabytes": megabytes,
                      "ranks": args.ranks, "batch_rows": args.batch_rows,
                      "results": results}, indent=2))
    print(f"\n{'operation':<16}{'sequential MB/s':>18}{'mpiscore MB/s':>16}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['sequential_mb_per_s']:>18,.0f}{r['mpiscore_mb_per_s']:>16,.0f}"
              f"{r['speed_vs_sequential']:>7.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import MPIEXEC

    main()
