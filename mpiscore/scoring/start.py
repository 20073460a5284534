"""The first lines a scoring process runs (rank/process.py's command): load main.py,
and with it NumPy, with one BLAS thread unless the launch sized BLAS, then run it.

OpenBLAS starts a thread per core when loaded, and each spins for a while before it
sleeps: ~0.1 s of CPU per scoring process here (0.31 -> 0.20 s to import onnxruntime,
NumPy and the scoring modules), taken from the scoring of the other processes on
a packed node. An ONNX session never calls NumPy's BLAS; an entry script's pool is
resized to its share afterwards (scorers._script, through threadpoolctl), so BLAS is
held to one thread only where threadpoolctl is there to do that. The variable is
as the launch left it again before a script runs: its environment is the launch's.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

_BLAS_THREADS = "OPENBLAS_NUM_THREADS"
# what OpenBLAS sizes its pool by when it loads, first found first: a launch that set
# one of them sized BLAS itself
_BLAS_SIZED_BY = (_BLAS_THREADS, "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_held = False  # whether NumPy's BLAS was loaded with one thread here


def loaded_main() -> Callable[[int, int, int], None]:
    """scoring/main.py's ``main``, imported with OpenBLAS held to one thread unless the
    launch sized it or nothing could resize it for a script (no threadpoolctl)."""
    global _held
    _held = not any(os.environ.get(name) for name in _BLAS_SIZED_BY) and \
        importlib.util.find_spec("threadpoolctl") is not None
    launched = os.environ.get(_BLAS_THREADS)  # None, or empty (which OpenBLAS ignores)
    if _held:
        os.environ[_BLAS_THREADS] = "1"
    try:
        from .main import main  # OpenBLAS reads the variable as NumPy loads it, here
    finally:
        if _held:
            _restore(_BLAS_THREADS, launched)
    return main


def _restore(name: str, value: str | None) -> None:
    if value is None:
        del os.environ[name]
    else:
        os.environ[name] = value


def blas_held() -> bool:
    """Whether NumPy's BLAS was loaded with one thread (:func:`loaded_main`), to be
    resized for an entry script."""
    return _held
