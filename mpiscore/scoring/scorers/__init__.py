"""What scores a batch, by kind: one small interface, and a table of the kinds.

A scoring process opens one scorer for its life and hands it batch after
batch (scoring/pipeline.py); nothing else in the process knows what kind it
is. Each kind is a module here with a factory in ``SCORERS`` (h5py's table of
file drivers is the model): "onnx" is an ONNX Runtime session (onnx.py),
"script" a user's entry script with init() and run(mini_batch) (script.py).
A factory imports its module when first called, so a process loads only the
runtime of the kind its job uses. A new kind is one module and one entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import ConfigError
from ..start import blas_held

if TYPE_CHECKING:
    from pathlib import Path

    from ...config import ScorerSettings
    from ...model import Column, DataStamp, TensorSpec


class Scorer(Protocol):
    """Scores batches of model inputs; opened once per process by its kind's factory."""

    @property
    def inputs(self) -> list[TensorSpec]:
        """What it takes, by name; the job binds the data to these once (model.py)."""

    @property
    def fixed_batch(self) -> int | None:
        """The rows it insists on per call, if any (the probe scores so many)."""

    @property
    def run_rows(self) -> int:
        """Rows it gives its runtime per call, where it slices batches (0: whole)."""

    @property
    def label_width(self) -> int:
        """Bytes of the longest string label it can output (0: the probe sizes strings)."""

    @property
    def data_files(self) -> Mapping[str, Path]:
        """The files besides the model (or script) that its scores depend on, by the name
        it gives each (an ONNX model's external data): the job's fingerprint digests
        them, so --resume refuses changed ones as it refuses a changed model."""

    @property
    def data_stamps(self) -> tuple[DataStamp, ...]:
        """:attr:`data_files` as this scorer loaded them (model.data_stamps): each
        process's are checked against the job's, so that all score the same weights."""

    @property
    def columns(self) -> Mapping[str, Column]:
        """The output (and class) behind each key of :meth:`score`'s result so far."""

    def score(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Output columns for one batch of bound inputs, one row per input row (a script
        gets the batch's columns as read, and may return lines, io.fields.LINES)."""

    @property
    def layouts(self) -> Mapping[str, bool]:
        """What its first batches decided of the outputs' layout that shapes alone may not
        tell again (a sequence output stacked per target, True, or per row): the job
        carries it to every process (:meth:`fix_schema`)."""

    def fix_schema(self, schema: Mapping[str, tuple[str, tuple[int, ...]]],
                   layouts: Mapping[str, bool]) -> None:
        """Hold results to these columns (key -> dtype, per-row shape) and layouts: those
        the job's probe found, so that every process's first batch is held to them."""

    def close(self) -> None:
        """The process is done scoring (a script's shutdown() runs here)."""


ScorerFactory = Callable[[bytes, str, "ScorerSettings"], Scorer]
"""Opens a scorer from the model's bytes, its path (as the job names it: in messages, and
where files beside it are found) and the session settings."""


def _onnx(model_bytes: bytes, model: str, settings: ScorerSettings) -> Scorer:
    from .onnx import OnnxScorer

    return OnnxScorer.open(model_bytes, model, settings)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _script(source: bytes, script: str, settings: ScorerSettings) -> Scorer:
    """An entry script, its numeric libraries' thread pools sized as an ONNX session's
    would be (the rank's cores / its processes) unless the launch set them: OpenMP
    and BLAS otherwise start a thread per core of the node in every process. The
    variables reach libraries the script loads (torch reads them at import); NumPy's
    BLAS, loaded already, is limited through threadpoolctl (the scripts extra). An
    empty variable counts as unset, as OpenBLAS reads it."""
    threads = settings.intra_op_threads
    given = [name for name in THREAD_VARIABLES if os.environ.get(name)]
    for name in THREAD_VARIABLES:
        if not os.environ.get(name):
            os.environ[name] = str(threads)
    if not given:
        _limit_loaded_pools(threads)
    elif blas_held():  # loaded with one thread (start.py); the launch sized other pools
        _limit_loaded_pools(threads, "blas")
    from .script import ScriptScorer

    return ScriptScorer.open(source, script, settings)


def _limit_loaded_pools(threads: int, user_api: str | None = None) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without the scripts extra: only libraries loaded later obey
        return
    threadpool_limits(threads, user_api=user_api)


SCORERS: dict[str, ScorerFactory] = {"onnx": _onnx, "script": _script}


def register(kind: str, factory: ScorerFactory) -> None:
    """Make ``open_scorer(kind, ...)`` call ``factory``."""
    SCORERS[kind] = factory


def open_scorer(kind: str, model_bytes: bytes, model: str, settings: ScorerSettings
                ) -> Scorer:
    """A scorer of ``kind`` for the model ``model_bytes``, read from the path ``model``."""
    try:
        factory = SCORERS[kind]
    except KeyError:
        raise ConfigError(f"{model}: no scorer of kind {kind!r} (known: "
                          f"{', '.join(sorted(SCORERS))})") from None
    return factory(model_bytes, model, settings)
