"""ONNX output values -> per-row columns: what a scored batch hands to the writers.

onnxruntime returns tensors as NumPy arrays, but classifiers exported with
skl2onnx's defaults (ZipMap) return a list of ``{class: probability}`` maps,
one per row, and string labels as object arrays. Converting right after
``session.run``, in the scoring process, lets everything downstream see one
plain NumPy array per output column:

- numeric tensors: as they are;
- ``tensor(string)``: NumPy unicode arrays (HDF5 stores fixed-length UTF-8,
  Parquet Arrow strings);
- ``seq(map(K,tensor(V)))`` (ZipMap): one column per class, named
  ``<output>_<class>``, classes in the sorted order of the first row's keys;
- ``seq(tensor(T))``: one tensor per row, stacked (rows x element), or one tensor
  per target, each rows long (skl2onnx's MultiOutputClassifier), stacked as rows x
  targets x element. Which one, the first batch whose rows tell them apart decides.

Anything else is refused when the scorer is built, during set-up, with one
line naming the output and its ONNX type.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import AmbiguousRows, ModelError, ScoringError
from ...model import ORT_TYPES, Column
from .protobuf import fields, message

_TENSOR = re.compile(r"tensor\((\w+)\)")
_SEQ_OF_MAPS = re.compile(r"seq\(map\((int64|string),tensor\((\w+)\)\)\)")
_SEQ_OF_TENSORS = re.compile(r"seq\(tensor\((\w+)\)\)")


@dataclass(frozen=True)
class OutputKind:
    """How one ONNX output becomes columns: its form and the NumPy dtype of its values."""

    name: str
    ort_type: str
    form: str  # "tensor", "maps" (one column per class) or "tensors" (stacked)
    dtype: str  # "str" for strings


def output_kinds(nodes: Sequence[Any], model: str) -> list[OutputKind]:
    """The form of each session output (``NodeArg``s); those mpiscore cannot write are
    refused together, in one line."""
    kinds, refused = [], []
    for node in nodes:
        kind = _kind(node.name, node.type)
        if kind is None:
            refused.append(f"{node.name!r} has ONNX type {node.type}")
        else:
            kinds.append(kind)
    if refused:
        raise ModelError(f"{model}: output {', '.join(refused)}, which mpiscore cannot write "
                         "(it writes numeric and string tensors, sequences of maps (ZipMap) "
                         "and sequences of tensors)")
    return kinds


def _kind(name: str, ort_type: str) -> OutputKind | None:
    for form, pattern in (("tensor", _TENSOR), ("maps", _SEQ_OF_MAPS),
                          ("tensors", _SEQ_OF_TENSORS)):
        match = pattern.fullmatch(ort_type)
        if match:
            dtype = _dtype(match.groups()[-1])
            return None if dtype is None or (form == "maps" and dtype == "str") \
                else OutputKind(name, ort_type, form, dtype)
    return None


def _dtype(element: str) -> str | None:
    return "str" if element == "string" else ORT_TYPES.get(f"tensor({element})")


class OutputConverter:
    """Turns the values of one ``session.run`` into columns keyed by their default name.

    A map output's classes are fixed by the first batch this converter sees
    (the probe, in the process that prepares the job); every row of every later
    batch must have the same classes, or the batch fails naming the output.
    """

    def __init__(self, kinds: list[OutputKind], model: str) -> None:
        self.kinds, self.model = kinds, model
        self.columns: dict[str, Column] = {}  # in output order, classes in sorted order
        self.classes: dict[str, list[Any]] = {}  # map output -> its classes, sorted
        self.per_target: dict[str, bool] = {}  # seq(tensor) output -> its layout, decided

    def convert(self, values: Sequence[Any], rows: int) -> dict[str, np.ndarray]:
        """One array per column, first dimension ``rows``."""
        columns: dict[str, np.ndarray] = {}
        for kind, value in zip(self.kinds, values, strict=True):
            if kind.form == "maps":
                for label, array in self._class_columns(kind, value, rows):
                    self._add(columns, f"{kind.name}_{label}", array, Column(kind.name, label))
            elif kind.form == "tensors":
                self._add(columns, kind.name, self._stacked(kind, value, rows), Column(kind.name))
            else:
                array = value.astype(str) if kind.dtype == "str" else value
                self._add(columns, kind.name, array, Column(kind.name))
        return columns

    def _add(self, columns: dict[str, np.ndarray], key: str, array: np.ndarray,
             column: Column) -> None:
        if key in columns:
            raise ModelError(f"{self.model}: output {column.output!r} and another output both "
                             f"make a column named {key!r}")
        self.columns.setdefault(key, column)
        columns[key] = array

    def _class_columns(self, kind: OutputKind, maps: Sequence[dict[Any, Any]], rows: int
                       ) -> Iterator[tuple[str, np.ndarray]]:
        """One (label, probabilities) per class of a ZipMap-style list of maps."""
        self._check_length(kind, maps, rows)
        classes = self.classes.setdefault(kind.name, sorted(maps[0]))
        keys = set(classes)
        for row, mapping in enumerate(maps):
            if mapping.keys() != keys:
                raise ScoringError(f"{self.model}: output {kind.name!r} row {row} has classes "
                                   f"{_shown(sorted(mapping))}; expected {_shown(classes)}, "
                                   "those of the first row scored")
        table = np.array([[mapping[c] for c in classes] for mapping in maps], dtype=kind.dtype)
        for index, label in enumerate(classes):
            yield str(label), np.ascontiguousarray(table[:, index])

    def _stacked(self, kind: OutputKind, tensors: Sequence[np.ndarray], rows: int) -> np.ndarray:
        shapes = {np.shape(t) for t in tensors}
        if len(shapes) > 1:
            raise ModelError(f"{self.model}: output {kind.name!r} ({kind.ort_type}) holds "
                             f"tensors of shapes {_shown(sorted(shapes))}; mpiscore needs one "
                             "tensor per row or per target, all of one shape")
        per_target = self._per_target(kind, tensors, rows, shapes.pop() if shapes else ())
        stacked = np.stack([np.asarray(t) for t in tensors], axis=1 if per_target else 0)
        return stacked.astype(str) if kind.dtype == "str" else stacked

    def _per_target(self, kind: OutputKind, tensors: Sequence[np.ndarray], rows: int,
                    shape: tuple[int, ...]) -> bool:
        """Whether the sequence holds a tensor per target (each ``rows`` long) rather than
        one per row: as first decided, else as these rows tell (one row stacks the same
        either way, and decides nothing)."""
        by_target = len(tensors) > 0 and len(shape) >= 1 and shape[0] == rows
        by_row = len(tensors) == rows
        decided = self.per_target.get(kind.name)
        if decided is None and by_target and by_row:
            if rows > 1:
                raise AmbiguousRows(f"{self.model}: output {kind.name!r} ({kind.ort_type}) "
                                    f"holds {rows} tensors of {rows} rows for {rows} rows")
            return False
        if decided is None and (by_target or by_row):
            decided = self.per_target[kind.name] = by_target
        if decided is None or not (by_target if decided else by_row):
            needed = {None: "one tensor per input row, or per target with a row per input row",
                      True: f"one tensor per target, {rows} rows each",
                      False: "one tensor per input row"}[decided]
            raise ModelError(f"{self.model}: output {kind.name!r} ({kind.ort_type}) has "
                             f"{len(tensors)} tensors of shape {shape} for {rows} input rows; "
                             f"mpiscore needs {needed}")
        return decided

    def _check_length(self, kind: OutputKind, values: Sequence[Any], rows: int) -> None:
        if len(values) != rows:
            raise ModelError(f"{self.model}: output {kind.name!r} ({kind.ort_type}) has "
                             f"{len(values)} elements for {rows} input rows; mpiscore needs "
                             "one element per input row")


def _shown(items: list[Any], most: int = 8) -> str:
    shown = ", ".join(map(repr, items[:most]))
    return f"[{shown}]" if len(items) <= most else f"[{shown} and {len(items) - most} more]"


LABEL_ATTRIBUTES = {b"classlabels_strings", b"values_strings", b"default_string",
                    b"cats_strings"}
"""Attributes holding the strings a model's nodes can output: class labels of
ZipMap and the ai.onnx.ml classifiers, LabelEncoder and CategoryMapper values."""


def label_width(model_bytes: bytes) -> int:
    """UTF-8 bytes of the longest string label the model's nodes name (0 if none).

    A string output of a classifier is one of its labels, so HDF5's
    fixed-length strings sized by this never truncate one. Read straight from
    the protobuf (ModelProto.graph.node.attribute), so mpiscore needs no
    ``onnx`` package; a model it cannot walk gives 0, leaving the probe to size
    the strings.
    """
    try:
        graph = message(memoryview(model_bytes), 7)  # ModelProto.graph
        return 0 if graph is None else max(map(len, _graph_labels(graph)), default=0)
    except (ValueError, IndexError):
        return 0


def _graph_labels(graph: memoryview) -> Iterator[bytes]:
    """Label strings of a GraphProto's nodes' attributes (NodeProto field 5)."""
    for node in _nodes(graph):
        for kind, attribute in node:
            if kind != 5 or not isinstance(attribute, memoryview):
                continue
            parts = list(fields(attribute))
            name = next((bytes(v) for n, v in parts if n == 1 and isinstance(v, memoryview)), b"")
            for n, value in parts:
                if isinstance(value, memoryview) and n in (4, 9) and name in LABEL_ATTRIBUTES:
                    yield bytes(value)  # AttributeProto s = 4, strings = 9


def _nodes(graph: memoryview) -> Iterator[list[tuple[int, memoryview | int]]]:
    """The fields of each of a GraphProto's nodes (field 1), each followed by those of
    its subgraphs' nodes (AttributeProto g = 6, graphs = 11)."""
    for number, node in fields(graph):
        if number != 1 or not isinstance(node, memoryview):
            continue
        parts = list(fields(node))
        yield parts
        for kind, attribute in parts:
            if kind == 5 and isinstance(attribute, memoryview):
                for n, value in fields(attribute):
                    if n in (6, 11) and isinstance(value, memoryview):
                        yield from _nodes(value)


STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def node_domains(model_bytes: bytes) -> set[str] | None:
    """The operator domains of the model's nodes, subgraphs included (``""``: the standard
    operators, ``ai.onnx.ml``: skl2onnx's trees, linear models, ZipMap), read from the
    protobuf (NodeProto.domain); None for a model it cannot walk."""
    try:
        graph = message(memoryview(model_bytes), 7)  # ModelProto.graph
        if graph is None:
            return set()
        return {next((bytes(v).decode() for n, v in node if n == 7 and isinstance(v, memoryview)),
                     "") for node in _nodes(graph)}
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
