"""The first lines a scoring process runs (rank/process.py's command): load main.py,
and with it NumPy, with one BLAS thread unless the launch sized BLAS, then run it.

OpenBLAS starts a thread per core when loaded, and each spins for a while before it
sleeps: ~0.1 s of CPU per scoring process here (0.31 -> 0.20 s to import onnxruntime,
NumPy and the scoring modules), taken from the scoring of the other processes on
a packed node. An ONNX session never calls NumPy's BLAS; a script's pool is sized
afterwards by scorers/ (``_limit_loaded_pools``), and the variable is gone again
before a script runs, so the launch's environment is what it sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_BLAS_THREADS = "OPENBLAS_NUM_THREADS"


def loaded_main() -> Callable[[int, int, int], None]:
    """scoring/main.py's ``main``, imported with OpenBLAS held to one thread unless the
    launch set ``OPENBLAS_NUM_THREADS``."""
    launched = _BLAS_THREADS in os.environ
    if not launched:
        os.environ[_BLAS_THREADS] = "1"
    try:
        from .main import main  # OpenBLAS reads the variable as NumPy loads it, here
    finally:
        if not launched:
            del os.environ[_BLAS_THREADS]
    return main
