"""The hand-written reference: read a batch from HDF5, score it, write it, one process.

    python benchmarks/plain_loop.py MODEL DATA.h5 OUT.h5 THREADS BATCH_ROWS [PROVIDERS]

What a user would write without mpiscore; one ONNX Runtime session using
THREADS intra-op threads, on PROVIDERS (comma-separated; the CPU's by default).
Reads ``/features``, writes one dataset per output.
"""

from __future__ import annotations

import sys

import h5py
import onnxruntime as ort


def main(model: str, data: str, out: str, threads: int, batch_rows: int,
         providers: str = "CPUExecutionProvider") -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    asked = providers.split(",")
    if "CUDAExecutionProvider" in asked and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from pip's nvidia-* packages, as ORT's docs say
    session = ort.InferenceSession(model, options, providers=asked)
    if session.get_providers()[0] != asked[0]:  # onnxruntime fell back: no comparison
        sys.exit(f"plain_loop.py: {asked[0]} did not start (got {session.get_providers()})")
    names = [o.name for o in session.get_outputs()]
    with h5py.File(data, "r") as source, h5py.File(out, "w") as target:
        features = source["features"]
        rows = len(features)
        outputs = None
        for start in range(0, rows, batch_rows):
            results = session.run(names, {"features": features[start:start + batch_rows]})
            if outputs is None:
                outputs = [target.create_dataset(n, (rows, *r.shape[1:]), r.dtype)
                           for n, r in zip(names, results, strict=True)]
            for dataset, result in zip(outputs, results, strict=True):
                dataset[start:start + len(result)] = result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
         *sys.argv[6:7])
