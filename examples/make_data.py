"""Write the example's input data: the same blobs as HDF5 and as a Parquet dataset.

    python examples/make_data.py [--rows 1000000]

Writes ``examples/data/blobs.h5`` (dataset ``/features``, chunked, plus the
true ``/labels``) and ``examples/data/blobs.parquet/`` (columns ``id``,
``f0``..``f15``, ``label``, in four files; score it with ``--columns 'f*'
--keep-columns id``, as ``id`` and ``label`` are numeric too and never guessed
to be features). Needs only mpiscore's dependencies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from blobs import blobs

DATA = Path(__file__).with_name("data")


def write_hdf5(features: np.ndarray, labels: np.ndarray, path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features, chunks=(min(16384, len(features)),
                                                                 features.shape[1]))
        handle.create_dataset("labels", data=labels)


def write_parquet(features: np.ndarray, labels: np.ndarray, folder: Path, files: int = 4) -> None:
    folder.mkdir(exist_ok=True)
    ids = np.arange(len(features))
    for part, rows in enumerate(np.array_split(ids, files)):
        columns = {"id": rows, **{f"f{i}": features[rows, i] for i in range(features.shape[1])},
                   "label": labels[rows]}
        pq.write_table(pa.table(columns), folder / f"part-{part}.parquet", row_group_size=65536)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    features, labels = blobs(args.rows, seed=7)
    write_hdf5(features, labels, args.out / "blobs.h5")
    write_parquet(features, labels, args.out / "blobs.parquet")
    print(f"wrote {args.rows} rows to {args.out}/blobs.h5 and {args.out}/blobs.parquet/")


if __name__ == "__main__":
    main()
