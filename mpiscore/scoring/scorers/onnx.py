"""The "onnx" scorer: one ONNX Runtime session, created once, applied batch after batch.

Thread counts are always set explicitly (ONNX Runtime otherwise sizes its
pools from the whole machine and spins idle threads). A batch is run in
slices: of the size run_rows.py measures as fastest (or ``--run-rows``), so
that intermediate tensors stay in cache; for a model with a fixed batch
dimension, of that size, the last one padded with zeros and its padding
dropped from the output. What the session returns becomes one NumPy array
per output column here (onnx_outputs.py), so ZipMap maps and string labels
look like any other output downstream.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...config import ScorerSettings
from ...errors import ModelError, ScoringError
from ...model import (
    Column,
    DataStamp,
    TensorSpec,
    check_same_data,
    data_stamps,
    read_model,
    tensor_spec,
)
from .onnx_data import external_data, model_folder
from .onnx_outputs import (
    STANDARD_DOMAINS,
    OutputConverter,
    label_width,
    node_domains,
    output_kinds,
)
from .providers import check_started, session_providers
from .run_rows import WHOLE, RunRows

OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

DATA_FOLDER = "session.model_external_initializers_file_folder_path"
DATA_FOLDER_SINCE = (1, 21)  # onnxruntime's first version that reads DATA_FOLDER
ORT_VERSION = tuple(int(part) for part in re.findall(r"\d+", ort.__version__)[:2])


def open_session(model_bytes: bytes, model: str, settings: ScorerSettings
                 ) -> ort.InferenceSession:
    """An inference session with explicit threads, spinning policy and providers, for the
    model ``model_bytes`` read from the path ``model``."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the user as one mpiscore error line
    ort.set_default_logger_severity(4)  # and a provider that did not start: check_started
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.session.inter_op_threads
    options.graph_optimization_level = OPTIMIZATION[settings.session.graph_optimization]
    spin = "1" if settings.session.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    providers = session_providers(settings)
    source = session_source(model_bytes, model, options)
    try:  # what onnxruntime prints when it drops a provider, check_started says in a line
        with contextlib.redirect_stdout(io.StringIO()):
            session = ort.InferenceSession(source, sess_options=options,
                                           providers=providers)
    except Exception as exc:  # onnxruntime raises pybind types without a common base
        raise ModelError(f"{model}: cannot load as an ONNX model: {_first_line(exc)}") from exc
    check_started(session, settings)
    return session


def session_source(model_bytes: bytes, model: str, options: ort.SessionOptions,
                   version: tuple[int, ...] = ORT_VERSION) -> bytes | str:
    """What the session is opened from: the bytes the job checked (and sent, once);
    for a model with external data, with ``options`` naming the model's folder, where
    onnxruntime then looks for the data instead of the working directory. An
    onnxruntime before 1.21 ignores that option, so it opens the model's path (which
    must still hold those bytes). A missing data file is refused here, in one line."""
    if not external_data(model_bytes, model):
        return model_bytes
    if version >= DATA_FOLDER_SINCE:
        options.add_session_config_entry(DATA_FOLDER, str(model_folder(model)))
        return model_bytes
    if read_model(Path(model)) != model_bytes:
        raise ModelError(f"{model}: the model file changed while the job started; "
                         "start it again")
    return model


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class OnnxScorer:
    """Scores batches of model inputs with one session (a scorers.Scorer)."""

    def __init__(self, session: ort.InferenceSession, model: str, model_bytes: bytes,
                 slicing: RunRows | None = None, stamps: tuple[DataStamp, ...] = ()) -> None:
        """``stamps``: the model's external data files as the session loaded them."""
        self.session, self.model, self.model_bytes = session, model, model_bytes
        self.data_stamps = stamps
        self.inputs = [tensor_spec(node, model) for node in session.get_inputs()]
        self.output_names = [node.name for node in session.get_outputs()]
        self.converter = OutputConverter(output_kinds(session.get_outputs(), model), model)
        self.fixed_batch = _fixed_batch(self.inputs, model)
        _refuse_rows_not_first(session.get_outputs(), model, self.fixed_batch)
        self.slicing = RunRows(WHOLE) if slicing is None else slicing

    @classmethod
    def open(cls, model_bytes: bytes, model: str, settings: ScorerSettings) -> OnnxScorer:
        """The "onnx" kind's factory: a session with ``settings`` for ``model_bytes``;
        external data replaced while the session loaded them is refused."""
        files = external_data(model_bytes, model)
        before = data_stamps(files)
        session = open_session(model_bytes, model, settings)
        check_same_data(model, data_stamps(files), before, "while this process loaded it")
        return cls(session, model, model_bytes, _slicing(session, model_bytes, settings),
                   before)

    @property
    def label_width(self) -> int:
        """The longest class label in the model's nodes (read when the job is prepared)."""
        return label_width(self.model_bytes)

    @property
    def data_files(self) -> dict[str, Path]:
        """The model's external data files, by the location the model names each."""
        return external_data(self.model_bytes, self.model)

    @property
    def columns(self) -> dict[str, Column]:
        """The ONNX output (and class) behind each column key of :meth:`score`'s result."""
        return self.converter.columns

    def score(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Output columns for a batch of bound inputs, one row per input row, keyed by
        their default names (``columns`` says where each comes from)."""
        rows = len(next(iter(feeds.values())))
        measuring = self.fixed_batch is None and self.slicing.measuring
        started = self.slicing.clock() if measuring else 0.0
        size = self.fixed_batch or self.slicing.size(rows)
        columns = (self.converter.convert(self._run(feeds), rows) if size == rows
                   else self._run_in_pieces(feeds, rows, size))
        if measuring:
            self.slicing.timed(rows, self.slicing.clock() - started)
        return _Columns(self.model, columns)

    @property
    def run_rows(self) -> int:
        """Rows per session run (0: whole batches), chosen so far."""
        return self.fixed_batch or self.slicing.chosen or WHOLE

    @property
    def layouts(self) -> dict[str, bool]:
        return dict(self.converter.per_target)

    def fix_schema(self, schema: Mapping[str, tuple[str, tuple[int, ...]]],
                   layouts: Mapping[str, bool]) -> None:
        """The graph fixes its outputs' types and shapes itself; a sequence output's
        layout, as the probe decided it, is this process's too: a first batch of as
        many rows as targets could not tell it."""
        self.converter.per_target.update(layouts)

    def close(self) -> None:
        """Nothing to release: the process exits without destroying the session."""

    def _run(self, feeds: dict[str, np.ndarray]) -> list[object]:
        try:
            return self.session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime raises its own pybind types
            raise ScoringError(f"{self.model}: onnxruntime failed: {_first_line(exc)}") from exc

    def _run_in_pieces(self, feeds: dict[str, np.ndarray], rows: int, size: int
                       ) -> dict[str, np.ndarray]:
        """Runs of ``size`` rows, the last one padded for a fixed batch dimension."""
        pad = size == self.fixed_batch
        pieces = []
        for start in range(0, rows, size):
            chunk = {name: array[start:start + size] for name, array in feeds.items()}
            taken = min(size, rows - start)
            if pad:
                chunk = {name: _pad(array, size) for name, array in chunk.items()}
            columns = self.converter.convert(self._run(chunk), size if pad else taken)
            pieces.append({key: column[:taken] for key, column in columns.items()})
        return {key: _joined(self.model, key, [piece[key] for piece in pieces], size)
                for key in pieces[0]}


class _Columns(dict[str, np.ndarray]):
    """A batch's output columns. A column the job expects but this batch lacks (a map
    output whose classes differ between scoring processes) fails the batch by name."""

    def __init__(self, model: str, columns: dict[str, np.ndarray]) -> None:
        super().__init__(columns)
        self.model = model

    def __missing__(self, key: str) -> np.ndarray:
        raise ScoringError(f"{self.model}: no output column {key!r} in this batch (it has "
                           f"{', '.join(self)}); the model's outputs changed form between batches")


def _joined(model: str, key: str, columns: list[np.ndarray], size: int) -> np.ndarray:
    try:
        return np.concatenate(columns)
    except ValueError as exc:  # a sequence output whose elements' shape changed between runs
        raise ScoringError(f"{model}: output column {key!r} differs in shape between the "
                           f"batch's runs of {size} rows ({_first_line(exc)}); pass --run-rows "
                           "with the batch's size to run it whole") from exc


def _slicing(session: ort.InferenceSession, model_bytes: bytes, settings: ScorerSettings
             ) -> RunRows:
    """``--run-rows``, else measured, for a graph of standard operators on the CPU alone.
    Whole batches otherwise: other providers (a GPU's kernels gain from more rows, and
    it has no core cache to fit), and ai.onnx.ml operators (skl2onnx's linear models
    and trees), whose results can change in the last bits with a run's row count
    (2 ulp for a LinearClassifier and Normalizer at 1,024-row slices): a measured size
    differs between processes and runs, and output must not depend on it. Timed by the
    thread's CPU clock where the session runs on the calling thread alone."""
    fixed = settings.session.run_rows
    if fixed is None and (session.get_providers() != ["CPUExecutionProvider"] or
                          not _standard_graph(model_bytes)):
        fixed = WHOLE
    one_thread = settings.intra_op_threads == 1 and settings.session.inter_op_threads == 1
    return RunRows(fixed, time.thread_time if one_thread else time.perf_counter)


def _standard_graph(model_bytes: bytes) -> bool:
    """Whether every node is a standard operator (not one of a model whose nodes the
    protobuf walk cannot read)."""
    domains = node_domains(model_bytes)
    return domains is not None and domains <= STANDARD_DOMAINS


def _refuse_rows_not_first(outputs: list[ort.NodeArg], model: str,
                           fixed_batch: int | None) -> None:
    """An output declared with a fixed first dimension (not the model's fixed batch) and
    a symbolic one after it (``[2, N]``) has its rows along another axis: a batch of as
    many rows as that first dimension would be written transposed, and look right."""
    for node in outputs:
        shape = list(node.shape or []) if node.type.startswith("tensor(") else []
        if len(shape) >= 2 and isinstance(shape[0], int) and shape[0] != fixed_batch and \
                any(not isinstance(dim, int) for dim in shape[1:]):
            shown = ", ".join(str(dim) if dim is not None else "?" for dim in shape)
            raise ModelError(f"{model}: output {node.name!r} is declared [{shown}]: its rows "
                             "are not along the first axis; mpiscore needs one output row "
                             "per input row first (transpose it in the model)")


def _fixed_batch(inputs: list[TensorSpec], model: str) -> int | None:
    sizes = {spec.fixed_batch for spec in inputs}
    if len(sizes) > 1:
        shown = sorted(map(str, sizes))
        raise ModelError(f"{model}: inputs disagree on the batch dimension: {shown}")
    return sizes.pop() if sizes else None


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    padding = np.zeros((size - len(array), *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, padding])
